"""Writes about connections; secrets are only ever written here, encrypted by the model field."""

from django.db import transaction

from .models import Connection


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
