"""Admin of builds: the read-only build page and its Docker Info tab, and the Docker operations."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from connections import roles
from connections.admin_roles import ProjectRolesAdmin, refuse_unless_each, sees_everything
from dockersupport_site.admin_display import cut, status_badge

from ..cleanup.registry import deletions_waiting
from ..login.services import builds_set_pinned
from ..models import Build, DockerOperation, PushedImage
from ..operations.selectors import (
    build_attribution,
    build_duration,
    build_logins,
    build_operations,
    build_operations_shown,
    build_pushed_images,
    containers_shown,
    docker_info,
    docker_info_empty_reason,
    docker_info_summary,
    image_reference,
)
from .base import ReadOnlyAdmin

LOGIN_TONES = {"logged in": "ok", "failed": "failed", "pending": "waiting"}


def duration_text(delta) -> str:
    """'1h 02m', '3m 05s', '4.2 s': a duration as people read it."""
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def build_status_badge(build: Build, short: bool = False):
    """The build's status as a badge; a failed build's exit code beside it."""
    label = build.status if short else build.get_status_display()
    if build.status == Build.Status.FAILED and build.exit_code is not None:
        label = f"{label} · exit {build.exit_code}"
    return status_badge(build.status, label)


def build_label(build: Build):
    """'<configuration> #<number>' on one line, a long configuration id cut; pinned builds say so."""
    pinned = status_badge("pinned", "pinned", tone="running") if build.pinned else ""
    ident = build.configuration.ident
    return format_html('<span class="ds-build-label"><span class="ds-cut" style="max-width:12em" title="{}">{}</span>'
                       '<span>#{}</span>{}</span>', ident, ident, build.number, pinned)


def cleanup_status_badge(image: PushedImage):
    """A pushed image's clean-up status as a badge. While its build exists the image is only retained with it:
    clean-up decides once the build is deleted (the stored value stays `kept`)."""
    if image.cleanup_status == PushedImage.CleanupStatus.KEPT and image.build_id is not None:
        return format_html('<span title="{}">{}</span>',
                           "kept with its build: clean-up decides when the build is deleted",
                           status_badge("retained", "retained", tone="neutral"))
    badge = status_badge(image.cleanup_status, image.get_cleanup_status_display())
    return format_html('<span title="{}">{}</span>', image.cleanup_reason, badge) if image.cleanup_reason else badge


@admin.register(Build)
class BuildAdmin(ProjectRolesAdmin):
    """A read-only page (developers pin and unpin: builds.change_build); viewers read it all."""

    project_path = "configuration__project"
    change_form_template = "admin/builds/build/change_form.html"
    docker_info_page_size = 50
    docker_info_list_size = 50
    build_page_list_size = 20
    # No per-row counts: the list stays one query and fits 1366 px (the Docker Info tab has the figures).
    list_display = ("build_shown", "status_shown", "agent_shown", "started", "duration")
    list_select_related = ("configuration", "agent")
    list_filter = ("status", "pinned", ("agent", admin.RelatedOnlyFieldListFilter),
                   ("configuration", admin.RelatedOnlyFieldListFilter))
    search_fields = ("configuration__ident", "configuration__name", "=number")
    date_hierarchy = "started_at"
    actions = ("pin", "unpin")
    readonly_fields = ("configuration", "agent", "number", "status", "started_at", "finished_at", "exit_code",
                       "docker_config", "heartbeat_at", "warnings", "error")
    # What a developer may post (pinned); the page itself shows no form (change_form.html).
    fields = ("pinned", *readonly_fields)

    class Media:
        css = {"all": ["builds/lists.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("configuration", "agent")

    def get_urls(self):
        info = self.admin_site.admin_view(self.docker_info_view)
        pin = self.admin_site.admin_view(require_POST(self.pin_view))
        return [path("<path:object_id>/docker-info/", info, name="builds_build_docker_info"),
                path("<path:object_id>/pin/", pin, name="builds_build_pin"), *super().get_urls()]

    def _build(self, request, object_id) -> Build:
        build = self.get_object(request, object_id)  # None for an id that is malformed or not visible
        if build is None:
            raise Http404(f"no build with id {object_id!r}")
        if not request.user.has_perm("builds.view_build", build):
            raise PermissionDenied
        return build

    def _link(self, request, obj, perm: str, url_name: str, text=None):
        """The object's admin page linked when the user may see it; else its name alone."""
        if obj is None:
            return "—"
        if request.user.has_perm(perm, obj):
            return format_html('<a href="{}">{}</a>', reverse(url_name, args=[obj.pk]), text or obj)
        return text or str(obj)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        build = self.get_object(request, object_id)
        if build is None or request.method != "GET":
            return super().change_view(request, object_id, form_url, extra_context)
        configuration, user = build.configuration, request.user
        pushed = build_pushed_images(build).select_related("build")
        pushed_admin = self.admin_site._registry.get(PushedImage)
        logins = build_logins(build)
        for login in logins:
            connection = login["connection"]
            login["connection_shown"] = (
                self._link(request, connection, "connections.view_connection", "admin:connections_connection_change")
                if connection is not None else "—")
            login["badge"] = status_badge(login["outcome"], tone=LOGIN_TONES.get(login["outcome"], "neutral"))
        context = {
            "title": f"Build {build}", "subtitle": None, "build": build,
            "status_badge": build_status_badge(build), "duration": duration_text(build_duration(build)),
            "configuration_link": self._link(request, configuration, "builds.view_buildconfiguration",
                                             "admin:builds_buildconfiguration_change"),
            "project_link": self._link(request, configuration.project, "connections.view_project",
                                       "admin:connections_project_change"),
            "agent_link": self._link(request, build.agent, "builds.view_agent", "admin:builds_agent_change"),
            "logins": logins, "warnings": docker_info_summary(build)["warnings"],
            "pushed_images": [(image, cleanup_status_badge(image)) for image in pushed[:self.build_page_list_size]],
            "pushed_count": pushed.count(),
            "pushed_url": (reverse("admin:builds_pushedimage_changelist") + f"?build__id__exact={build.pk}"
                           if pushed_admin is not None and pushed_admin.has_view_permission(request) else ""),
            "builds_url": (reverse("admin:builds_build_changelist") + f"?configuration__id__exact={configuration.pk}"),
            "may_pin": user.has_perm("builds.change_build", build),
            "operation_count": build.operations.count(), "attribution": build_attribution(build),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, context)

    def pin_view(self, request, object_id):
        """The page's Pin / Unpin button: a developer's right (builds.change_build)."""
        build = self._build(request, object_id)
        if not request.user.has_perm("builds.change_build", build):
            raise PermissionDenied
        pinned = request.POST.get("pinned") == "1"
        builds_set_pinned([build], pinned)
        done = "pinned: retention never deletes it" if pinned else "unpinned: retention rules apply to it again"
        self.message_user(request, f"Build {build} {done}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:builds_build_change", args=[build.pk]))

    def docker_info_view(self, request, object_id):
        """The Docker Info tab: summary, containers, pushed images and the paginated operations."""
        build = self._build(request, object_id)
        action, search = request.GET.get("action", ""), request.GET.get("q", "").strip()
        if action not in DockerOperation.Action.values:
            action = ""
        operations = build_operations(build, action, search)
        page = Paginator(operations, self.docker_info_page_size).get_page(request.GET.get("page"))
        info = docker_info(build)
        summary = info["summary"]
        # Long lists are cut on every page (the operations table has them all), never a failed container.
        shown = containers_shown(summary["containers"], self.docker_info_list_size)
        pushed = build_pushed_images(build).select_related("build")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Docker Info of build {build}", "opts": self.opts, "build": build, "original": build,
            "status_badge": build_status_badge(build), "duration": duration_text(build_duration(build)),
            "summary": summary, "containers": shown, "images": info["images"], "attribution": build_attribution(build),
            "empty": self._empty_reason(request, build) if not summary["operation_count"] else None,
            "pushed_images": [(image, cleanup_status_badge(image)) for image in pushed[:self.docker_info_list_size]],
            "pushed_count": info["pushed_count"],
            "pushed_url": reverse("admin:builds_pushedimage_changelist") + f"?build__id__exact={build.pk}",
            "operations": build_operations_shown(page.object_list, info["names"]),
            "actions": DockerOperation.Action.choices, "action": action, "search": search, "page": page,
            "query": urlencode({k: v for k, v in (("action", action), ("q", search)) if v}),
        }
        return TemplateResponse(request, "admin/builds/build/docker_info.html", context)

    @staticmethod
    def _empty_reason(request, build):
        """Why the tab is empty; the agent's own daemon error (its Docker endpoint) only to those who see agents."""
        reason = docker_info_empty_reason(build)
        if reason["kind"] == "daemon" and not request.user.has_perm("builds.view_agent", build.agent):
            reason = {**reason, "detail": ""}
        return reason

    def changelist_view(self, request, extra_context=None):
        # Images of deleted builds still waiting for (or refused) registry deletion, at a glance.
        waiting = deletions_waiting(None if sees_everything(request)
                                    else roles.projects_with(request.user, roles.Role.VIEWER))
        pending, failed = waiting[PushedImage.CleanupStatus.PENDING], waiting[PushedImage.CleanupStatus.FAILED]
        if pending or failed:
            url = reverse("admin:builds_pushedimage_changelist") + "?build__isempty=1"
            self.message_user(request, format_html(
                'Images of deleted builds: {} pending deletion, {} failed. <a href="{}">See them</a>.',
                pending, failed, url), messages.WARNING if failed else messages.INFO)
        return super().changelist_view(request, {"title": "Builds", **(extra_context or {})})

    def has_add_permission(self, request):
        return False  # builds start through run_build or the API

    @admin.display(description="build", ordering="configuration__ident")
    def build_shown(self, obj):
        return build_label(obj)

    @admin.display(description="agent", ordering="agent__name")
    def agent_shown(self, obj):
        return format_html('<span class="ds-cut" style="max-width:9em" title="{}">{}</span>', obj.agent, obj.agent)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return format_html('<span style="white-space:nowrap">{}</span>',
                           timezone.localtime(obj.started_at).strftime("%Y-%m-%d %H:%M"))

    @admin.display(description="status", ordering="status")
    def status_shown(self, obj):
        return build_status_badge(obj, short=True)

    @admin.display(description="duration")
    def duration(self, obj):
        return f"{duration_text(build_duration(obj))}{' so far' if obj.is_running else ''}"

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
    list_display = ("time_shown", "build_shown", "action", "image_shown", "container_shown", "exit_shown")
    list_select_related = ("build__configuration",)
    list_filter = ("action", ("agent", admin.RelatedOnlyFieldListFilter))
    search_fields = ("image", "container_name", "digest")
    show_full_result_count = False

    class Media:
        css = {"all": ["builds/lists.css"]}

    @admin.display(description="time", ordering="time_nano")
    def time_shown(self, obj):
        # The day's time to the millisecond; the whole date in the title.
        time = timezone.localtime(obj.time)
        return format_html('<span style="white-space:nowrap" title="{}">{}</span>',
                           time.strftime("%Y-%m-%d %H:%M:%S.%f %Z"), time.strftime("%m-%d %H:%M:%S.%f")[:-3])

    @admin.display(description="build", ordering="build")
    def build_shown(self, obj):
        return build_label(obj.build)

    @admin.display(description="image", ordering="image")
    def image_shown(self, obj):
        return cut(image_reference(obj.image, obj.tag), 16)

    @admin.display(description="container", ordering="container_name")
    def container_shown(self, obj):
        return cut(obj.container_name or obj.container_id, 8)

    @admin.display(description="exit", ordering="exit_code")
    def exit_shown(self, obj):
        if obj.exit_code is None:
            return ""
        return status_badge("failed" if obj.exit_code else "ok", str(obj.exit_code))
