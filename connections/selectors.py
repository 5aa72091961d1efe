"""Reads about projects and connections."""

from collections.abc import Callable

from django.db.models import QuerySet

from .models import Connection, Project


def connections_usable_by(project: Project) -> QuerySet[Connection]:
    """Connections of the project and of its ancestors: the only ones its builds may use."""
    return Connection.objects.filter(project__in=[p.pk for p in project.lineage()]).select_related("project")


def connections_usable_by_any(project_ids) -> QuerySet[Connection]:
    """Connections that builds of any of these projects may use: theirs and their ancestors'."""
    tree = dict(Project.objects.values_list("pk", "parent_id"))
    lineages = set()
    for pk in project_ids:
        while pk is not None and pk not in lineages:
            lineages.add(pk)
            pk = tree.get(pk)
    return Connection.objects.filter(project__in=lineages).select_related("project")


def connections_nearest_first(project: Project) -> list[Connection]:
    """The connections the project's builds may use: its own, then its parent's, and so on (within a project,
    in the database's order); never another project's."""
    depth = {p.pk: i for i, p in enumerate(project.lineage())}
    return sorted(connections_usable_by(project), key=lambda c: depth[c.project_id])  # a stable sort


def connection_nearest(project: Project, match: Callable[[Connection], bool]) -> Connection | None:
    """The connection `match` accepts that is nearest up the project's tree (connections_nearest_first)."""
    return next((connection for connection in connections_nearest_first(project) if match(connection)), None)


def connection_get(project_ident: str, connection_ident: str) -> Connection:
    """Raises Connection.DoesNotExist with the identifiers in its message."""
    try:
        return Connection.objects.select_related("project").get(project__ident=project_ident, ident=connection_ident)
    except Connection.DoesNotExist:
        raise Connection.DoesNotExist(
            f"no connection '{connection_ident}' in project '{project_ident}'"
        ) from None
