"""Admin of build configurations (with their registry logins), shown under their project and beside the
connections they log in with (connections does not import builds: its project and connection pages are extended
here)."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from connections.admin import ConnectionAdmin as BaseConnectionAdmin
from connections.admin import ProjectAdmin as BaseProjectAdmin
from connections.admin import (
    RelatedLinksAdmin,
    add_link,
    admin_link,
    administered_projects,
    join_lines,
    links_list,
    usable_connections,
)
from connections.admin_roles import ProjectRolesTabularInline, choices_for, sees_everything
from connections.models import Connection, Project

from ..login.services import login_hosts_validate
from ..models import Build, BuildConfiguration, LoginConnection

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
    """The login list offers the connections of the configuration's project and its ancestors only: the form's
    choices follow the project of the form (as posted, else as saved), the autocomplete the project field's
    current value (connections/usable_by.js); before a project is chosen, those of the projects one administers."""

    model = LoginConnection
    formset = LoginConnectionFormSet
    fields = ("connection", "optional", "position")
    autocomplete_fields = ("connection",)
    extra = 0
    verbose_name = "registry login"
    verbose_name_plural = ("Docker Support: registry logins — log in to these registries before each build, "
                           "log out after it")

    class Media:
        js = ("connections/usable_by.js",)

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        field = formset.form.base_fields.get("connection")
        project = self.project_of_form(request, obj)
        if field is not None and project is not None:
            field.queryset = field.queryset.filter(project__in=[p.pk for p in project.lineage()])
            getattr(field.widget, "widget", field.widget).attrs["data-usable-by"] = project.pk
        return formset

    @staticmethod
    def project_of_form(request, obj):
        """The configuration's project as the form has it: posted (or prefilled by ?project=) when the user may
        choose it, else the saved one; None on an add page before a project is chosen."""
        given = (request.POST if request.method == "POST" else request.GET).get("project", "")
        if given.isdigit():
            choices = Project.objects.all() if sees_everything(request) else administered_projects(request)
            project = choices.filter(pk=int(given)).first()
            if project is not None:
                return project
        return obj.project if obj is not None and obj.project_id is not None else None


def builds_url(**filters) -> str:
    return reverse("admin:builds_build_changelist") + "?" + urlencode(filters)


@admin.register(BuildConfiguration)
class BuildConfigurationAdmin(RelatedLinksAdmin):
    list_display = ("configuration", "project_ident", "login_count", "retention", "build_count")
    list_display_links = ("configuration",)
    list_select_related = ("project",)
    list_filter = ("cleanup_pushed_images", "exact_attribution", ("project", admin.RelatedOnlyFieldListFilter))
    search_fields = ("ident", "name", "project__ident", "project__name")
    autocomplete_fields = ("project",)
    inlines = [LoginConnectionInline]
    # Docker Support last: its registry logins (the inline) follow it directly.
    fieldsets = (
        (None, {"fields": ("project", "ident", "name")}),
        ("Retention", {"fields": ("keep_last", "keep_days")}),
        ("Docker Support", {
            "description": "How builds' Docker operations are told apart, clean-up of the images they push; the "
                           "registries they log in to are listed below.",
            "fields": ("exact_attribution", "cleanup_pushed_images", "protected_tags"),
        }),
    )

    def get_queryset(self, request):
        builds = (Build.objects.filter(configuration=OuterRef("pk")).order_by().values("configuration")
                  .annotate(n=Count("pk")).values("n"))
        return super().get_queryset(request).annotate(
            _login_count=Count("logins", distinct=True),
            _build_count=Coalesce(Subquery(builds, output_field=IntegerField()), Value(0)),
        )

    @admin.display(description="configuration", ordering="ident")
    def configuration(self, obj):
        if obj.name == obj.ident:
            return obj.ident
        return format_html('{}<br><span class="ds-mono quiet">{}</span>', obj.name, obj.ident)

    @admin.display(description="project", ordering="project__ident")
    def project_ident(self, obj):
        return format_html('<span title="{}">{}</span>', obj.project, obj.project.ident)

    @admin.display(description="logins", ordering="_login_count")
    def login_count(self, obj):
        return obj._login_count

    @admin.display(description="retention")
    def retention(self, obj):
        rules = [f"last {obj.keep_last} builds" if obj.keep_last else "",
                 f"{obj.keep_days} days" if obj.keep_days else ""]
        kept = "keeps " + " or ".join(rule for rule in rules if rule) if any(rules) else "keeps every build"
        return f"{kept}; {'deletes' if obj.cleanup_pushed_images else 'keeps'} pushed images"

    @admin.display(description="builds", ordering="_build_count")
    def build_count(self, obj):
        return format_html('<a href="{}">{}</a>', builds_url(configuration__id__exact=obj.pk), obj._build_count)

    def related_links(self, request, obj):
        links = [("Project", admin_link(request, obj.project) or str(obj.project))]
        counts = obj.builds.aggregate(all=Count("pk"), running=Count("pk", filter=Q(status=Build.Status.RUNNING)),
                                      failed=Count("pk", filter=~Q(status__in=[Build.Status.RUNNING,
                                                                                  Build.Status.SUCCEEDED])))
        builds = format_html('<a href="{}">{} build{}</a>', builds_url(configuration__id__exact=obj.pk),
                             counts["all"], "" if counts["all"] == 1 else "s")
        details = [format_html('<a href="{}">{} running</a>', builds_url(configuration__id__exact=obj.pk,
                                                                       status__exact=Build.Status.RUNNING),
                               counts["running"]) if counts["running"] else "",
                   format_html("{} failed, in error or lost", counts["failed"]) if counts["failed"] else ""]
        details = [detail for detail in details if detail]
        if details:
            builds = format_html("{} ({})", builds, format_html_join(", ", "{}", ((d,) for d in details)))
        links.append(("Builds", builds))
        logins = list(obj.logins.select_related("connection__project"))
        shown = [admin_link(request, login.connection) for login in logins]
        shown = [format_html("{} ({}{})", link, login.connection.registry_address or "Docker Hub",
                             ", optional" if login.optional else "")
                 for link, login in zip(shown, logins) if link is not None]
        links.append(("Logs in with", links_list(shown, empty="no registry (see Docker Support below)",
                                                 hidden=len(logins) - len(shown))))
        return links


class BuildConfigurationInline(ProjectRolesTabularInline):
    model = BuildConfiguration
    fields = ("ident", "name", "cleanup_pushed_images", "keep_last", "keep_days")
    extra = 0
    show_change_link = True


# Configurations are shown under their project and beside the connections they log in with; the project and
# connection admins live in `connections`, which must not import `builds`, so they are extended here.
admin.site.unregister(Project)
admin.site.unregister(Connection)


@admin.register(Project)
class ProjectAdmin(BaseProjectAdmin):
    inlines = [*BaseProjectAdmin.inlines, BuildConfigurationInline]

    def related_links(self, request, obj):
        configurations = list(obj.build_configurations.order_by("ident"))
        shown = [admin_link(request, configuration) for configuration in configurations]
        items = [links_list(shown, empty="none yet", hidden=shown.count(None))]
        if request.user.has_perm("builds.add_buildconfiguration", BuildConfiguration(project=obj)):
            items.append(add_link("admin:builds_buildconfiguration_add", "Add a configuration", project=obj.pk))
        return [*super().related_links(request, obj),
                ("Build configurations", join_lines(items))]


@admin.register(Connection)
class ConnectionAdmin(BaseConnectionAdmin):
    def related_links(self, request, obj):
        logins = list(obj.logins.select_related("configuration__project").order_by("configuration__ident"))
        shown = [admin_link(request, login.configuration) for login in logins]
        shown = [format_html("{} (project {}{})", link, login.configuration.project.ident,
                             ", optional" if login.optional else "")
                 for link, login in zip(shown, logins) if link is not None]
        return [*super().related_links(request, obj),
                ("Build configurations logging in with it",
                 links_list(shown, empty="none", hidden=len(logins) - len(shown)))]
