"""What the admin pages of builds share: rows shown by project role (connections.admin_roles), some read-only."""

from connections.admin_roles import ProjectRolesAdmin


class ReadOnlyAdmin(ProjectRolesAdmin):
    """Rows written by the service only; the admin reads them (their viewers do; superusers may delete)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
