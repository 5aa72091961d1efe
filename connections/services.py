"""Actions on connections: re-encrypting secrets, testing a connection against its registry."""

from dataclasses import dataclass, field

from django.db import transaction

from .models import Connection
from .registries import RegistryError, open_registry


@transaction.atomic
def connection_rotate_secrets() -> int:
    """Re-encrypts every stored secret with the newest key of DOCKERSUPPORT_ENCRYPTION_KEY.

    Run it after putting a new key first in the list; afterwards the old key can be removed.
    Returns the number of connections rewritten.
    """
    count = 0
    for row in Connection.objects.select_for_update().values("pk", *Connection.SECRET_FIELDS):
        # Values read through the field are plaintext; saving re-encrypts them with the first key.
        updates = {name: row[name] for name in Connection.SECRET_FIELDS if row[name]}
        if updates:
            Connection.objects.filter(pk=row["pk"]).update(**updates)
            count += 1
    return count


@dataclass
class ConnectionTestResult:
    ok: bool
    verified: list[str] = field(default_factory=list)
    error: str = ""

    def as_text(self) -> str:
        lines = [f"  verified: {line}" for line in self.verified]
        head = "OK" if self.ok else f"FAILED: {self.error}"
        return "\n".join([head, *lines])


def connection_test(connection: Connection) -> ConnectionTestResult:
    """Gets the connection's credentials (for ECR: AssumeRole, token) and has its registry accept them."""
    result = ConnectionTestResult(ok=False)
    try:
        with open_registry(connection, session_name=f"dockersupport-test-{connection.ident}") as registry:
            for line in registry.check_login():  # what was verified before a failure is reported with it
                result.verified.append(line)
    except RegistryError as exc:
        result.error = f"connection '{connection}': {exc}"
        return result
    result.ok = True
    return result
