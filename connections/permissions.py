"""Object permissions of projects, members, connections and API tokens, as `rules` predicates on roles.

`user.has_perm("connections.change_connection", connection)` answers from the user's role on the
connection's project (connections/roles.py); without an object, whether the user holds that role on
some project (what the admin asks before listing or adding). builds/permissions.py does the same for
the builds' models. Registered when the app is ready.
"""

import rules

from . import roles

Role = roles.Role


def on_project(role: str, project_of=lambda obj: obj):
    """A predicate: at least `role` on the object's project (`project_of(obj)`), or on some project."""

    @rules.predicate
    def predicate(user, obj=None) -> bool:
        return roles.has_role(user, None if obj is None else project_of(obj), role)

    predicate.name = f"at least {role}"
    return predicate


@rules.predicate
def is_superuser(user) -> bool:
    return roles.is_superuser(user)


@rules.predicate
def is_member(user) -> bool:
    """Has a role on some project: may use the admin (it shows them only what their roles allow)."""
    return bool(roles.project_roles(user))


@rules.predicate
def owns_token(user, token=None) -> bool:
    return token is None or token.user_id == user.pk


def register() -> None:
    of_project = lambda obj: obj.project_id  # noqa: E731 - a row that belongs to a project
    rules.set_perm("connections", is_member | is_superuser)  # the app's page in the admin
    # Projects: a project's admin edits it and adds subprojects (the parent must be theirs); only a
    # superuser adds a top-level project (checked where the parent is chosen).
    rules.set_perm("connections.view_project", on_project(Role.VIEWER, lambda p: p.pk))
    rules.set_perm("connections.add_project", on_project(Role.ADMIN))
    rules.set_perm("connections.change_project", on_project(Role.ADMIN, lambda p: p.pk))
    rules.set_perm("connections.delete_project", on_project(Role.ADMIN, lambda p: p.pk))
    for action, role in (("view", Role.VIEWER), ("add", Role.ADMIN), ("change", Role.ADMIN),
                         ("delete", Role.ADMIN)):
        rules.set_perm(f"connections.{action}_connection", on_project(role, of_project))
        rules.set_perm(f"connections.{action}_membership", on_project(role, of_project))
    rules.set_perm("connections.test_connection", on_project(Role.DEVELOPER, of_project))
    # API tokens: each user their own; a superuser any (to revoke).
    for action in ("view", "add", "change", "delete"):
        rules.set_perm(f"connections.{action}_apitoken", is_superuser | (rules.is_authenticated & owns_token))


def refusal(user, project, doing: str) -> str:
    """Why `user` may not do `doing` in `project`, for an API's 403: their role there, and the token's limits."""
    role = roles.role_on(user, project)
    text = f"you may not {doing} in project '{project.ident}': your role there is {role or 'none'}"
    token = roles.token_of(user)
    if token is not None and token.read_only:
        text += " (this API token is read-only)"
    return text
