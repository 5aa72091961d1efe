"""Admin of builds, with their Docker Info tab, and of Docker operations."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from connections import roles
from connections.admin_roles import ProjectRolesAdmin, refuse_unless_each, sees_everything

from ..cleanup.registry import deletions_waiting
from ..login.services import builds_set_pinned
from ..models import Build, DockerOperation, PushedImage
from ..operations.selectors import build_operations, build_pushed_images, containers_shown, docker_info_summary
from .base import ReadOnlyAdmin


@admin.register(Build)
class BuildAdmin(ProjectRolesAdmin):
    """Read-only but for `pinned`, which developers change (builds.change_build); viewers read it all."""

    project_path = "configuration__project"
    change_form_template = "admin/builds/build/change_form.html"
    docker_info_page_size = 50
    docker_info_list_size = 50
    list_display = ("__str__", "configuration", "agent", "status", "started_at", "duration", "exit_code",
                    "operation_count", "pinned")
    list_select_related = ("configuration", "agent")
    list_filter = ("status", "pinned", ("agent", admin.RelatedOnlyFieldListFilter),
                   ("configuration", admin.RelatedOnlyFieldListFilter))
    search_fields = ("configuration__ident", "configuration__name", "=number")
    date_hierarchy = "started_at"
    actions = ("pin", "unpin")
    readonly_fields = ("configuration", "agent", "number", "status", "started_at", "finished_at", "exit_code",
                       "docker_config", "heartbeat_at", "warnings", "error")
    fields = ("pinned", *readonly_fields)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_operations=Count("operations"))

    def get_urls(self):
        view = self.admin_site.admin_view(self.docker_info_view)
        return [path("<path:object_id>/docker-info/", view, name="builds_build_docker_info"), *super().get_urls()]

    def docker_info_view(self, request, object_id):
        """The Docker Info tab: summary, containers, pushed images and the paginated operations."""
        build = self.get_object(request, object_id)  # None for an id that is malformed or not visible
        if build is None:
            raise Http404(f"no build with id {object_id!r}")
        if not request.user.has_perm("builds.view_build", build):
            raise PermissionDenied
        action, search = request.GET.get("action", ""), request.GET.get("q", "").strip()
        if action not in DockerOperation.Action.values:
            action = ""
        operations = build_operations(build, action, search)
        page = Paginator(operations, self.docker_info_page_size).get_page(request.GET.get("page"))
        summary = docker_info_summary(build)
        # Long lists are cut on every page (the operations table has them all), never a failed container.
        shown = containers_shown(summary["containers"], self.docker_info_list_size)
        pushed = build_pushed_images(build)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Docker Info of build {build}", "opts": self.opts, "build": build, "original": build,
            "summary": summary, "containers": shown,
            "pushed_images": pushed[:self.docker_info_list_size], "pushed_count": pushed.count(),
            "pushed_url": reverse("admin:builds_pushedimage_changelist") + f"?build__id__exact={build.pk}",
            "actions": DockerOperation.Action.choices, "action": action, "search": search, "page": page,
            "query": urlencode({k: v for k, v in (("action", action), ("q", search)) if v}),
        }
        return TemplateResponse(request, "admin/builds/build/docker_info.html", context)

    def changelist_view(self, request, extra_context=None):
        # Images of deleted builds still waiting for (or refused) registry deletion, at a glance.
        waiting = deletions_waiting(None if sees_everything(request)
                                    else roles.projects_with(request.user, roles.Role.VIEWER))
        pending, failed = waiting[PushedImage.CleanupStatus.PENDING], waiting[PushedImage.CleanupStatus.FAILED]
        if pending or failed:
            url = reverse("admin:builds_pushedimage_changelist") + "?build__isempty=1"
            self.message_user(request, format_html(
                'Images of deleted builds: {} pending deletion, {} failed. <a href="{}">See them</a>.',
                pending, failed, url), messages.INFO)
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request):
        return False  # builds start through run_build or the API

    @admin.display(description="operations", ordering="_operations")
    def operation_count(self, obj):
        return obj._operations

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None:
            return "running" if obj.is_running else "—"
        seconds = int((obj.finished_at - obj.started_at).total_seconds())
        return f"{seconds // 60}m {seconds % 60:02d}s"

    @admin.action(description="Pin: never delete by retention", permissions=("change",))
    def pin(self, request, queryset):
        self._set_pinned(request, queryset, True)

    @admin.action(description="Unpin: retention rules apply again", permissions=("change",))
    def unpin(self, request, queryset):
        self._set_pinned(request, queryset, False)

    def _set_pinned(self, request, queryset, pinned: bool) -> None:
        """Every selected build or none: a developer's right on each (builds.change_build)."""
        what = "pin" if pinned else "unpin"
        queryset = queryset.select_related("configuration")
        if not refuse_unless_each(self, request, "builds.change_build", queryset, what):
            return
        count = builds_set_pinned(queryset, pinned)
        self.message_user(request, f"{what.capitalize()}ned {count} build(s).", messages.SUCCESS)


@admin.register(DockerOperation)
class DockerOperationAdmin(ReadOnlyAdmin):
    project_path = "build__configuration__project"
    list_display = ("time", "build", "agent", "action", "image", "tag", "container_name", "exit_code")
    list_select_related = ("build__configuration", "agent")
    list_filter = ("action", ("agent", admin.RelatedOnlyFieldListFilter))
    search_fields = ("image", "container_name", "digest")
    show_full_result_count = False
