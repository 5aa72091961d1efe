"""The admin site: open to staff and to every project member, who see only what their roles allow.

Members need no staff flag or Django permission: their roles on projects (connections/roles.py)
grant what they may see and do, through the `rules` predicates of connections/permissions.py and
builds/permissions.py. Django's own model permissions grant nothing here (AuthenticationOnlyBackend):
a role is the one way to rights, so revoking it revokes them.

Its index opens on an overview (builds/admin/overview.py), then lists the models by what an administrator
does with them, our own first; celery-beat's schedule tables stay reachable by URL but out of the lists.
"""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError
from django.urls import reverse

# The index's groups, in order: (title, [(app label, model), ...]). A model in no group is listed after
# these under its own app; those of HIDDEN in none.
GROUPS = [
    ("Builds", [("builds", "Build"), ("builds", "BuildConfiguration"), ("builds", "DockerOperation")]),
    ("Projects and connections", [("connections", "Project"), ("connections", "Connection")]),
    ("Agents", [("builds", "Agent"), ("builds", "SetAsideRecord")]),
    ("Clean-up", [("builds", "PushedImage"), ("builds", "CleanupRun")]),
]
LAST_GROUPS = [
    ("Users and API tokens", [("auth", "User"), ("auth", "Group"), ("connections", "ApiToken")]),
    ("Schedules (advanced)", [("django_celery_beat", "PeriodicTask")]),
]
# celery-beat's building blocks of a periodic task: edited from the task's own page (its + buttons), or by URL.
HIDDEN = {("django_celery_beat", name) for name in ("ClockedSchedule", "CrontabSchedule", "SolarSchedule",
                                                    "IntervalSchedule")}


def may_use_admin(user) -> bool:
    from connections.roles import project_roles

    return user.is_active and (user.is_staff or user.is_superuser or bool(project_roles(user)))


class MemberAuthenticationForm(AdminAuthenticationForm):
    def confirm_login_allowed(self, user):
        if not may_use_admin(user):
            raise ValidationError(self.error_messages["invalid_login"], code="invalid_login",
                                  params={"username": self.username_field.verbose_name})


class AdminSite(admin.AdminSite):
    site_header = site_title = "dockersupport"
    index_title = "Docker support for CI builds"
    login_form = MemberAuthenticationForm

    def has_permission(self, request):
        return may_use_admin(request.user)

    def get_urls(self):
        from builds.admin.overview import server_cleanup_urls

        return [*server_cleanup_urls(self), *super().get_urls()]

    def index(self, request, extra_context=None):
        from builds.admin.overview import overview_context

        return super().index(request, {**overview_context(request), **(extra_context or {})})

    def get_app_list(self, request, app_label=None):
        """Our groups in GROUPS order (on an app's own page: the groups holding its models), then the rest."""
        apps = self._build_app_dict(request, app_label)
        models = {(app["app_label"], model["object_name"]): model for app in apps.values() for model in app["models"]}
        placed = {key for _, keys in GROUPS + LAST_GROUPS for key in keys} | HIDDEN
        groups = [group for title, keys in GROUPS if (group := _group(title, keys, models))]
        for app in sorted(apps.values(), key=lambda app: app["name"].lower()):
            rest = [m for m in app["models"] if (app["app_label"], m["object_name"]) not in placed]
            if rest:
                groups.append({**app, "models": sorted(rest, key=lambda m: m["name"])})
        groups += [group for title, keys in LAST_GROUPS if (group := _group(title, keys, models))]
        return groups


def _group(title: str, keys, models: dict) -> dict | None:
    shown = [models[key] for key in keys if key in models]
    if not shown:
        return None
    first_label = next(key for key in keys if key in models)[0]
    app_url = shown[0]["admin_url"] or reverse("admin:app_list", kwargs={"app_label": first_label})
    return {"name": title, "app_label": first_label, "app_url": app_url,
            "has_module_perms": True, "models": shown}


class AuthenticationOnlyBackend(ModelBackend):
    """Logs users in with their password; grants no permission (roles do, and superusers have all)."""

    def get_user_permissions(self, user_obj, obj=None):
        return set()

    def get_group_permissions(self, user_obj, obj=None):
        return set()
