"""Actions on connections (re-encrypting secrets, testing a connection against its registry) and on
users' API tokens (issuing, revoking, authenticating)."""

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import roles
from .models import ApiToken, Connection, Project
from .registries import RegistryError, open_registry
from .tokens import USER_TOKEN_PREFIX, new_token, token_digest

# last_used_at is a hint for people ("is this token still used?"): written at most this often, so
# that a busy CI does not turn every API request into a write.
LAST_USED_PRECISION = timedelta(minutes=1)
MAKE_ONE = "make a new one in the admin (API tokens) or with `python manage.py drf_create_token USER`"


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


def connection_test_unsaved(connection: Connection) -> ConnectionTestResult:
    """Tests values typed in a form, before they are saved; saves nothing.

    `connection` holds the typed values (its `pk` is the stored connection's, None for a new one) and, in
    `secrets_given`, the secret fields that were typed. A stored secret only goes where it was given for: when a
    typed destination (Connection.DESTINATION_FIELDS) differs from the stored row's, the secrets not typed again
    are not used, and the test asks for them instead of sending them anywhere.
    """
    tested = copy.copy(connection)
    moves = {name: labels for name, labels in connection.secret_moves().items() if labels}
    if moves:
        stored = Connection.objects.filter(pk=connection.pk).values(*Connection.SECRET_FIELDS).get()
        missing, changed = [], []
        for name, labels in moves.items():
            if name not in connection.secrets_given:
                if stored[name] and name in Connection.TYPE_SECRETS.get(connection.type, ()):
                    missing.append(str(Connection._meta.get_field(name).verbose_name))
                    changed.extend(label for label in labels if label not in changed)
                setattr(tested, name, "")
        if missing:
            return ConnectionTestResult(ok=False, error=(
                f"not tested: {' and '.join(changed)} changed, so type the {' and the '.join(missing)} too; a stored "
                "secret is only sent to the destination it was given for"))
    # Never the stored row's identity: an ECR token cached for the saved values is not taken for the typed ones.
    tested.pk = tested.id = None
    return connection_test(tested)


# --- API tokens ------------------------------------------------------------------------------------


class ApiTokenRefused(Exception):
    """The token exists but may not be used; the message says why (revoked, expired), never whose it is."""


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


@transaction.atomic
def api_token_issue(*, user, name: str, expires_at: datetime | None = None, projects: Iterable[Project] = (),
                    read_only: bool = False, replace: bool = False) -> tuple[ApiToken, str]:
    """A new API token of `user`: (the row, the token). Only its digest is stored: show the token once.

    `projects` limits it to those projects and their subprojects (each must be one where the user has a
    role), `read_only` to reading; `replace` revokes the user's other tokens.
    """
    projects = list(projects)
    allowed = set(roles.projects_with(user))
    foreign = [project.ident for project in projects if project.pk not in allowed]
    if foreign:
        raise ValidationError({"projects": f"{user} has no role on project {', '.join(foreign)}: a token can be "
                                           "limited only to projects where its user has a role"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "the expiry must be in the future (or empty: it does not expire)"})
    token, digest = new_token(USER_TOKEN_PREFIX)
    row = ApiToken(user=user, name=name, digest=digest, prefix=token[:12], expires_at=expires_at,
                   read_only=read_only, limited=bool(projects))
    row.full_clean()
    if replace:
        ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(revoked_at=timezone.now())
    row.save()
    row.projects.set(projects)
    return row, token


def api_token_revoke(*, token: ApiToken) -> bool:
    """The token stops working at once. False when it was already revoked."""
    now = timezone.now()
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    if revoked:
        token.revoked_at = now
    return bool(revoked)


def api_token_authenticate(key: str) -> ApiToken | None:
    """The usable token `key` (with its user), found by its digest; None when there is no such token.

    Raises ApiTokenRefused for a revoked or expired token, or one whose user is inactive. Notes when it
    was last used, at most once a LAST_USED_PRECISION, so that most requests only read.
    """
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(key)).first()
    if token is None:
        return None
    now = timezone.now()
    if token.revoked_at is not None:
        raise ApiTokenRefused(f"this API token was revoked at {_utc(token.revoked_at)}; {MAKE_ONE}")
    if token.expires_at is not None and token.expires_at <= now:
        raise ApiTokenRefused(f"this API token expired at {_utc(token.expires_at)}; {MAKE_ONE}")
    if not token.user.is_active:
        raise ApiTokenRefused("this API token's user is inactive")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_PRECISION)
        ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
