"""Object permissions of the builds' models, from roles on their project (see connections/permissions.py).

Viewers see configurations, builds, Docker operations and pushed images; developers also start,
finish and pin builds; admins edit configurations and retry the clean-up of their project's images.
Agents, their clean-ups and the site-wide clean-up runs are the superusers'.
"""

import rules

from connections.permissions import Role, is_member, is_superuser, on_project


def register() -> None:
    of_configuration = lambda configuration: configuration.project_id  # noqa: E731
    of_build = lambda build: build.configuration.project_id  # noqa: E731
    rules.set_perm("builds", is_member | is_superuser)
    for action, role in (("view", Role.VIEWER), ("add", Role.ADMIN), ("change", Role.ADMIN),
                         ("delete", Role.ADMIN)):
        rules.set_perm(f"builds.{action}_buildconfiguration", on_project(role, of_configuration))
        rules.set_perm(f"builds.{action}_loginconnection",
                       on_project(role, lambda login: login.configuration.project_id))
    rules.set_perm("builds.view_build", on_project(Role.VIEWER, of_build))
    rules.set_perm("builds.change_build", on_project(Role.DEVELOPER, of_build))  # pin, unpin
    rules.set_perm("builds.start_build", on_project(Role.DEVELOPER, of_configuration))
    rules.set_perm("builds.finish_build", on_project(Role.DEVELOPER, of_build))
    rules.set_perm("builds.view_dockeroperation", on_project(Role.VIEWER, lambda op: op.build.configuration.project_id))
    rules.set_perm("builds.view_pushedimage", on_project(Role.VIEWER, lambda image: image.project_id))
    rules.set_perm("builds.change_pushedimage", on_project(Role.ADMIN, lambda image: image.project_id))  # retry
    for model in ("agent", "agentcleanup", "cleanuprun", "setasiderecord"):
        for action in ("view", "add", "change", "delete"):
            rules.set_perm(f"builds.{action}_{model}", is_superuser)
