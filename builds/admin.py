"""Admin for build configurations, agents, builds, their Docker operations and pushed images."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from agent.cleanup import human
from connections.admin import ProjectAdmin as BaseProjectAdmin
from connections.models import Project

from . import agent_services, selectors, services
from .models import (
    Agent,
    AgentCleanup,
    Build,
    BuildConfiguration,
    CleanupRun,
    DockerOperation,
    LoginConnection,
    PushedImage,
)
from .server_cleanup import pushed_images_retry


class LoginConnectionFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        connections = [
            form.cleaned_data["connection"]
            for form in self.forms
            if form.cleaned_data.get("connection") and not form.cleaned_data.get("DELETE")
        ]
        try:
            services.login_hosts_validate(connections)
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None


class LoginConnectionInline(admin.TabularInline):
    model = LoginConnection
    formset = LoginConnectionFormSet
    fields = ("connection", "optional", "position")
    autocomplete_fields = ("connection",)
    extra = 0
    verbose_name = "registry login"
    verbose_name_plural = "Docker Support: log in to these registries before each build, log out after it"


@admin.register(BuildConfiguration)
class BuildConfigurationAdmin(admin.ModelAdmin):
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


class BuildConfigurationInline(admin.TabularInline):
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


class AgentCleanupInline(admin.TabularInline):
    model = AgentCleanup
    fields = ("at", "reason", "required", "before", "after", "reclaimed", "removed_images", "met")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "Free Disk Space runs (newest first)"

    def has_add_permission(self, request, obj=None):
        return False  # written by the clean-up only

    @admin.display(description="required")
    def required(self, obj):
        return human(obj.required_bytes)

    @admin.display(description="free before")
    def before(self, obj):
        return human(obj.free_before)

    @admin.display(description="free after")
    def after(self, obj):
        return human(obj.free_after)

    @admin.display(description="reclaimed")
    def reclaimed(self, obj):
        return human(obj.bytes_reclaimed)

    @admin.display(description="images removed")
    def removed_images(self, obj):
        return ", ".join(ref for item in obj.removed for ref in item["references"]) or "—"


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("name", "os", "serves", "state", "daemon", "running_builds", "free_space", "last_seen_at")
    list_filter = ("os", "daemon_ok")
    search_fields = ("name", "hostname", "docker_host")
    filter_horizontal = ("projects",)
    readonly_fields = ("token", "state", "daemon", "hostname", "agent_version", "reported_docker_host", "connected_at",
                       "last_seen_at", "free_space", "free_space_chart")
    fieldsets = (
        (None, {"fields": ("name", "os", "projects", "token")}),
        ("Its Docker daemon", {"fields": ("docker_host", "docker_data_path", "daemon", "reported_docker_host",
                                          "free_space", "free_space_chart")}),
        ("What it said of itself", {"fields": ("state", "hostname", "agent_version", "connected_at",
                                               "last_seen_at")}),
    )
    inlines = [AgentCleanupInline]
    actions = ("replace_token", "revoke_token")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _running=Count("builds", filter=Q(builds__status=Build.Status.RUNNING), distinct=True),
        ).prefetch_related("projects")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        agent = self.get_object(request, object_id)
        if agent is not None and request.method == "GET":
            if not agent_services.agent_is_connected(agent):
                self.message_user(request, f"Agent {agent} is not connected: {self._state_text(agent)}. Start it on "
                                           "its build host with `python manage.py agent --server URL --token-file "
                                           "FILE`.", messages.WARNING)
            elif agent.daemon_ok is False:
                self.message_user(request, f"The Docker daemon of agent {agent} does not answer: {agent.daemon_error}",
                                  messages.ERROR)
        return super().change_view(request, object_id, form_url, extra_context)

    @staticmethod
    def _state_text(agent) -> str:
        if agent.last_seen_at is None:
            return "never connected"
        return f"last seen {agent.last_seen_at:%Y-%m-%d %H:%M:%S %Z}"

    @admin.display(description="serves")
    def serves(self, obj):
        projects = [p.ident for p in obj.projects.all()]
        return ", ".join(projects) if projects else "every project (shared)"

    @admin.display(description="connected")
    def state(self, obj):
        if agent_services.agent_is_connected(obj):
            return mark_safe('<span style="color:var(--message-success-bg,#070)">connected</span>')
        return format_html('<span style="color:#ba2121">not connected</span> ({})', self._state_text(obj))

    @admin.display(description="Docker daemon")
    def daemon(self, obj):
        if obj.daemon_ok is None:
            return "—"
        if obj.daemon_ok:
            return f"answers (Docker {obj.daemon_version})" if obj.daemon_version else "answers"
        return format_html('<strong style="color:#ba2121">NOT ANSWERING</strong>: {}', obj.daemon_error)

    @admin.display(description="token")
    def token(self, obj):
        if not obj.token_hash:
            return "none (revoked or never made): `python manage.py agent_token NAME`, or the Replace token action"
        return f"made {obj.token_created_at:%Y-%m-%d %H:%M %Z}, stored hashed"

    @admin.display(description="free space")
    def free_space(self, obj):
        return human(obj.free_bytes) if obj.free_bytes is not None else "—"

    @admin.display(description="running builds", ordering="_running")
    def running_builds(self, obj):
        return obj._running

    @admin.action(description="Replace token (the new one is shown once)")
    def replace_token(self, request, queryset):
        for agent in queryset:
            _, token, _ = agent_services.agent_token_issue(name=agent.name)
            self.message_user(request, format_html(
                "New token of agent {} (shown only now; the old one no longer works): <code>{}</code>", agent, token),
                messages.WARNING)

    @admin.action(description="Revoke token (the agent stops at its next request)")
    def revoke_token(self, request, queryset):
        for agent in queryset:
            agent_services.agent_token_revoke(agent=agent)
        self.message_user(request, f"Revoked the tokens of {queryset.count()} agent(s).", messages.SUCCESS)

    @admin.display(description="free space over time")
    def free_space_chart(self, obj):
        """A small SVG line of the free space measured by the last Free Disk Space runs."""
        points = list(obj.cleanups.order_by("-at").values_list("at", "free_before", "free_after")[:50])[::-1]
        if not points:
            return "No Free Disk Space run yet."
        values = [v for _, before, after in points for v in (before, after)]
        low, high = min(values), max(values)
        span = (high - low) or 1
        width, height = 400, 80
        step = width / max(len(values) - 1, 1)
        coords = " ".join(f"{i * step:.1f},{height - (v - low) / span * (height - 10) - 5:.1f}"
                          for i, v in enumerate(values))
        return format_html(
            '<svg width="{}" height="{}" role="img" aria-label="free space from {} to {}" '
            'style="border:1px solid var(--hairline-color,#ccc)"><polyline fill="none" stroke="#417690" '
            'stroke-width="2" points="{}"/></svg><div>{} – {} free, over the last {} run(s)</div>',
            width, height, human(low), human(high), coords, human(low), human(high), len(points))


@admin.register(Build)
class BuildAdmin(admin.ModelAdmin):
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
        build = get_object_or_404(Build.objects.select_related("configuration__project", "agent"), pk=object_id)
        if not self.has_view_permission(request, build):
            raise PermissionDenied
        action, search = request.GET.get("action", ""), request.GET.get("q", "").strip()
        if action not in DockerOperation.Action.values:
            action = ""
        operations = selectors.build_operations(build, action, search)
        page = Paginator(operations, self.docker_info_page_size).get_page(request.GET.get("page"))
        summary = selectors.docker_info_summary(build)
        # Long lists are cut on every page (the operations table has them all), never a failed container.
        shown = selectors.containers_shown(summary["containers"], self.docker_info_list_size)
        pushed = build.pushed_images.order_by("pushed_at", "pk")
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
        counts = dict(PushedImage.objects.filter(build__isnull=True).exclude(
            cleanup_status__in=[PushedImage.CleanupStatus.DELETED, PushedImage.CleanupStatus.KEPT],
        ).values_list("cleanup_status").annotate(n=Count("pk")).order_by())
        if counts.get("pending") or counts.get("failed"):
            url = reverse("admin:builds_pushedimage_changelist") + "?build__isempty=1"
            self.message_user(request, format_html(
                'Images of deleted builds: {} pending deletion, {} failed. <a href="{}">See them</a>.',
                counts.get("pending", 0), counts.get("failed", 0), url), messages.INFO)
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

    @admin.action(description="Pin: never delete by retention")
    def pin(self, request, queryset):
        count = services.builds_set_pinned(queryset, True)
        self.message_user(request, f"Pinned {count} build(s).", messages.SUCCESS)

    @admin.action(description="Unpin: retention rules apply again")
    def unpin(self, request, queryset):
        count = services.builds_set_pinned(queryset, False)
        self.message_user(request, f"Unpinned {count} build(s).", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the service only; the admin reads them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(DockerOperation)
class DockerOperationAdmin(ReadOnlyAdmin):
    list_display = ("time", "build", "agent", "action", "image", "tag", "container_name", "exit_code")
    list_select_related = ("build__configuration", "agent")
    list_filter = ("action", ("agent", admin.RelatedOnlyFieldListFilter))
    search_fields = ("image", "container_name", "digest")
    show_full_result_count = False


@admin.register(PushedImage)
class PushedImageAdmin(ReadOnlyAdmin):
    list_display = ("reference", "tag", "configuration_ident", "build_number", "cleanup_status", "cleanup_reason",
                    "cleanup_attempts", "next_attempt_at", "pushed_at")
    list_select_related = ("build",)
    list_filter = ("cleanup_status", "registry", ("build", admin.EmptyFieldListFilter))
    search_fields = ("repository", "tag", "digest", "configuration_ident")
    actions = ("retry_deletion",)

    @admin.action(description="Retry deletion from the registry")
    def retry_deletion(self, request, queryset):
        count = pushed_images_retry(queryset)
        if count:
            from .tasks import retry_pending_deletions

            transaction.on_commit(lambda: retry_pending_deletions.apply_async(queue="server"))
        self.message_user(request, f"{count} image(s) will be deleted again (failed or pending ones only).",
                          messages.SUCCESS if count else messages.WARNING)


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    list_display = ("started_at", "trigger", "finished_at", "builds_deleted", "images_deleted", "images_kept",
                    "images_failed", "images_retrying")
    list_filter = ("trigger",)
    date_hierarchy = "started_at"
    readonly_fields = ("trigger", "started_at", "finished_at", "builds_deleted", "images_deleted", "images_kept",
                       "images_failed", "images_retrying", "report", "error")
    fields = readonly_fields
    exclude = ("details",)

    @admin.display(description="what happened")
    def report(self, obj):
        return format_html_join("", "<div>{}: <strong>{}</strong>{}</div>", (
            (entry.get("build") or entry.get("image"), entry.get("outcome"),
             f" — {entry['reason']}" if entry.get("reason") else "")
            for entry in obj.details
        )) or "—"
