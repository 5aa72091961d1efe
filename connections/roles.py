"""Who may do what on which project: members' roles, inherited down the project tree.

A user's role on a project is the highest of their own membership there and those of its
ancestors: a developer of `acme` is a developer of `acme-web`. Superusers are admins of every
project and alone manage agents and the site-wide clean-up. A request made with an API token is
narrowed by it: to the token's projects (and their subprojects) when it names any, to viewing when
it is read-only; such a request is never a superuser's.

Roles are computed once per user object (a request's user) from two small queries.
"""

from collections import defaultdict

from .models import Membership, Project

Role = Membership.Role
RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.ADMIN: 3}

_CACHE = "_dockersupport_roles"


def token_of(user):
    """The API token the request was made with (set by the token authentication), or None."""
    return getattr(user, "api_token", None)


def is_superuser(user) -> bool:
    """A superuser acting as one: not through a token that narrows what it may do."""
    if not (user.is_active and user.is_superuser):
        return False
    token = token_of(user)
    return token is None or not (token.read_only or token.limited)


def project_roles(user) -> dict[int, str]:
    """Project id → the user's role there (inherited from ancestors, narrowed by the request's token)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return {}
    cached = getattr(user, _CACHE, None)
    if cached is not None:
        return cached
    tree = dict(Project.objects.values_list("pk", "parent_id"))
    if user.is_superuser:
        roles = {pk: Role.ADMIN for pk in tree}
    else:
        roles = _inherited(dict(Membership.objects.filter(user=user).values_list("project_id", "role")), tree)
    token = token_of(user)
    if token is not None:
        if token.limited:  # to what is left of its projects: nothing once they were all deleted
            within = _subtrees(set(token.projects.values_list("pk", flat=True)), tree)
            roles = {pk: role for pk, role in roles.items() if pk in within}
        if token.read_only:
            roles = dict.fromkeys(roles, Role.VIEWER)
    setattr(user, _CACHE, roles)
    return roles


def forget(user) -> None:
    """Roles are computed again at the next question (after the user's memberships changed)."""
    if hasattr(user, _CACHE):
        delattr(user, _CACHE)


def role_on(user, project) -> str | None:
    """The user's role on `project` (a Project or its id); None when they have none."""
    pk = project if isinstance(project, int) else getattr(project, "pk", None)
    return project_roles(user).get(pk)


def has_role(user, project, role: str) -> bool:
    """At least `role` on `project`. With no project: at least `role` on some project."""
    roles = project_roles(user)
    if project is None:
        return any(RANK[held] >= RANK[role] for held in roles.values())
    held = role_on(user, project)
    return held is not None and RANK[held] >= RANK[role]


def projects_with(user, role: str = Role.VIEWER) -> list[int]:
    """Ids of the projects where the user has at least `role`."""
    return [pk for pk, held in project_roles(user).items() if RANK[held] >= RANK[role]]


def _children(tree: dict[int, int | None]) -> dict[int | None, list[int]]:
    children = defaultdict(list)
    for pk, parent in tree.items():
        children[parent].append(pk)
    return children


def _subtrees(roots: set[int], tree: dict[int, int | None]) -> set[int]:
    children, found, todo = _children(tree), set(), list(roots)
    while todo:
        pk = todo.pop()
        if pk not in found:
            found.add(pk)
            todo.extend(children.get(pk, []))
    return found


def _inherited(own: dict[int, str], tree: dict[int, int | None]) -> dict[int, str]:
    """Each project's role: the highest of its own and its ancestors'."""
    children, roles = _children(tree), {}
    for start, role in own.items():
        todo = [start]
        while todo:
            pk = todo.pop()
            if pk in roles and RANK[roles[pk]] >= RANK[role]:
                continue  # already as high from another membership (and so is its subtree)
            roles[pk] = role
            todo.extend(children.get(pk, []))
    return roles
