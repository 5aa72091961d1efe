"""The admin site: open to staff and to every project member, who see only what their roles allow.

Members need no staff flag or Django permission: their roles on projects (connections/roles.py)
grant what they may see and do, through the `rules` predicates of connections/permissions.py and
builds/permissions.py. Django's own model permissions grant nothing here (AuthenticationOnlyBackend):
a role is the one way to rights, so revoking it revokes them.
"""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError


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


class AuthenticationOnlyBackend(ModelBackend):
    """Logs users in with their password; grants no permission (roles do, and superusers have all)."""

    def get_user_permissions(self, user_obj, obj=None):
        return set()

    def get_group_permissions(self, user_obj, obj=None):
        return set()
