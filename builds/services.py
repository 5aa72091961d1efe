"""Writes about build configurations and builds.

Login/logout (issue 3), event ingestion (issue 4) and clean-ups (issues 5 and 6) add their
services here or in a module beside it named for the capability.
"""

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from connections.models import Connection

from .models import Build


def login_hosts_validate(connections: Iterable[Connection]) -> None:
    """A Docker config holds one credential per registry host: two logins to one host are an error."""
    seen: dict[str, Connection] = {}
    for connection in connections:
        host = connection.registry_address
        if host in seen:
            raise ValidationError(
                f"connections '{seen[host].ident}' and '{connection.ident}' both log in to {host}; "
                "a Docker config holds one credential per registry host",
                code="duplicate_registry_host",
            )
        seen[host] = connection


@transaction.atomic
def builds_set_pinned(builds: Iterable[Build], pinned: bool) -> int:
    """Pinned builds are never deleted by retention."""
    return Build.objects.filter(pk__in=[b.pk for b in builds]).update(pinned=pinned)
