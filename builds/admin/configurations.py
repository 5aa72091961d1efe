"""Admin of build configurations (with their registry logins), shown under their project too."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count

from connections.admin import ProjectAdmin as BaseProjectAdmin
from connections.admin import administered_projects, usable_connections
from connections.admin_roles import ProjectRolesAdmin, ProjectRolesTabularInline, choices_for
from connections.models import Project

from ..login.services import login_hosts_validate
from ..models import BuildConfiguration, LoginConnection

# A member puts configurations in the projects they administer, and their logins use those projects' connections.
choices_for(BuildConfiguration, "project")(administered_projects)
choices_for(LoginConnection, "connection")(usable_connections)


class LoginConnectionFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        connections = [
            form.cleaned_data["connection"]
            for form in self.forms
            if form.cleaned_data.get("connection") and not form.cleaned_data.get("DELETE")
        ]
        try:
            login_hosts_validate(connections)
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None


class LoginConnectionInline(ProjectRolesTabularInline):
    model = LoginConnection
    formset = LoginConnectionFormSet
    fields = ("connection", "optional", "position")
    autocomplete_fields = ("connection",)
    extra = 0
    verbose_name = "registry login"
    verbose_name_plural = "Docker Support: log in to these registries before each build, log out after it"


@admin.register(BuildConfiguration)
class BuildConfigurationAdmin(ProjectRolesAdmin):
    list_display = ("ident", "name", "project", "login_count", "cleanup_pushed_images", "keep_last", "keep_days")
    list_select_related = ("project",)
    list_filter = ("cleanup_pushed_images", ("project", admin.RelatedOnlyFieldListFilter))
    search_fields = ("ident", "name", "project__ident", "project__name")
    autocomplete_fields = ("project",)
    inlines = [LoginConnectionInline]
    fieldsets = (
        (None, {"fields": ("project", "ident", "name")}),
        ("Docker Support", {"fields": ("cleanup_pushed_images",)}),
        ("Retention", {"fields": ("keep_last", "keep_days")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_login_count=Count("logins", distinct=True))

    @admin.display(description="registry logins", ordering="_login_count")
    def login_count(self, obj):
        return obj._login_count


class BuildConfigurationInline(ProjectRolesTabularInline):
    model = BuildConfiguration
    fields = ("ident", "name", "cleanup_pushed_images", "keep_last", "keep_days")
    extra = 0
    show_change_link = True


# Configurations are shown under their project; the project admin lives in `connections`, which
# must not import `builds`, so it is extended here.
admin.site.unregister(Project)


@admin.register(Project)
class ProjectAdmin(BaseProjectAdmin):
    inlines = [*BaseProjectAdmin.inlines, BuildConfigurationInline]
