"""Admin of agents: their state, tokens, daemon and Free Disk Space runs (with a chart of free space)."""

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince

from connections.admin_roles import ProjectRolesAdmin, ProjectRolesTabularInline, sees_everything
from connections.admin_tokens import token_shown_once
from dockersupport_site.admin_display import cut, status_badge

from ..agents import services as agents
from ..agents.selectors import agent_is_connected
from ..cleanup.agent import AgentCleanupError, free_space_history, human, kept_items, parse_size, removed_items
from ..models import UNATTRIBUTED_KEPT, Agent, AgentCleanup, Build
from ..operations.selectors import agent_unattributed
from .free_space_chart import free_space_svg


class SizeField(forms.CharField):
    """A size as people write it (500M, 20G, 1T or bytes), stored in bytes; empty: none."""

    def prepare_value(self, value):
        if isinstance(value, int):
            for unit, factor in (("T", 1024 ** 4), ("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
                if value % factor == 0:
                    return f"{value // factor}{unit}"
        return value

    def to_python(self, value):
        value = super().to_python(value)
        if not value:
            return None
        try:
            return parse_size(value)
        except AgentCleanupError as exc:
            raise forms.ValidationError(str(exc)) from None


class AgentForm(forms.ModelForm):
    keep_free_bytes = SizeField(
        label="keep free", required=False,
        help_text="Like 20G: the agent runs Free Disk Space by itself when less is free on its Docker data volume "
                  "(at most every 5 minutes); empty: only when a build or an admin asks.")

    class Meta:
        model = Agent
        fields = "__all__"
        widgets = {"keep_patterns": forms.Textarea(attrs={"rows": 3, "cols": 60,
                                                          "placeholder": r"^registry\.example\.com/base/"})}


def _items_html(items, empty="—"):
    if not items:
        return empty
    return format_html_join(mark_safe("<br>"), "{}: {}", ((_item_name(item), item.get("reason") or "—")
                                                           for item in items))


def _item_name(item) -> str:
    if item.get("kind") == "build cache":
        return f"BuildKit's build cache ({human(item.get('size') or 0)})"
    return ", ".join(item.get("references") or []) or item.get("image") or "?"


class AgentCleanupInline(ProjectRolesTabularInline):
    model = AgentCleanup
    fields = ("at", "reason", "required", "before", "after", "reclaimed", "outcome", "removed_images", "kept_images")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "Free Disk Space runs (newest first)"

    def has_add_permission(self, request, obj=None):
        return False  # written by the clean-up only

    @admin.display(description="required met")
    def outcome(self, obj):
        return status_badge("ok", label="met") if obj.met else status_badge("shortfall")

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

    @admin.display(description="removed, and why")
    def removed_images(self, obj):
        return _items_html(removed_items(obj))

    @admin.display(description="kept, and why")
    def kept_images(self, obj):
        return _items_html(kept_items(obj))


@admin.register(Agent)
class AgentAdmin(ProjectRolesAdmin):
    """Superusers only (builds/permissions.py): agents serve many projects and their tokens run builds."""

    project_path = None
    form = AgentForm
    # Few columns of two lines: with the sidebar and the filters, a 1366 px window leaves about 700 px.
    list_display = ("name_shown", "state_and_daemon", "serves", "running_builds", "free_space")
    list_display_links = ("name_shown",)
    list_filter = ("os", "daemon_ok")
    search_fields = ("name", "hostname", "docker_host")
    filter_horizontal = ("projects",)
    readonly_fields = ("token", "state", "daemon", "hostname", "agent_version", "reported_docker_host", "connected_at",
                       "last_seen_at", "free_space", "free_space_chart", "unattributed")
    fieldsets = (
        (None, {"fields": ("name", "os", "projects", "token")}),
        ("Its Docker daemon", {"fields": ("docker_host", "docker_data_path", "daemon", "reported_docker_host",
                                          "free_space", "free_space_chart")}),
        ("Free Disk Space", {"fields": ("keep_patterns", "min_image_age", "keep_free_bytes"),
                             "description": "Which images the agent's clean-up leaves, and the free space it keeps "
                                            "by itself. Keep patterns are Python regular expressions, one per "
                                            "line, searched in each reference of an image (unanchored: write "
                                            "^ and $ to match a whole reference), as `docker images` shows it and "
                                            "in full (docker.io/library/busybox:latest). The agent applies "
                                            "changes at its next heartbeat."}),
        ("What it said of itself", {"fields": ("state", "hostname", "agent_version", "connected_at",
                                               "last_seen_at")}),
        ("Docker operations no build asked for", {
            "fields": ("unattributed",),
            "description": "Events of the daemon that no build's own Docker endpoint asked for while builds ran: "
                           "something on the host used the daemon directly. They belong to no build (never "
                           f"guessed); the newest {UNATTRIBUTED_KEPT} are kept."}),
    )
    unattributed_shown = 50
    inlines = [AgentCleanupInline]
    actions = ("replace_token", "revoke_token")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _running=Count("builds", filter=Q(builds__status=Build.Status.RUNNING), distinct=True),
        ).prefetch_related("projects")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        agent = self.get_object(request, object_id)
        if agent is not None and request.method == "GET":
            if not agent_is_connected(agent):
                self.message_user(request, f"Agent {agent} is not connected: {self._state_text(agent)}. Start it on "
                                           "its build host with `python manage.py agent --server URL --token-file "
                                           "FILE`.", messages.WARNING)
            elif agent.daemon_ok is False:
                self.message_user(request, f"The Docker daemon of agent {agent} does not answer: {agent.daemon_error}",
                                  messages.ERROR)
        return super().change_view(request, object_id, form_url, extra_context)

    def has_superuser_permission(self, request):
        return sees_everything(request)

    @staticmethod
    def _state_text(agent) -> str:
        if agent.last_seen_at is None:
            return "never connected"
        return f"last seen {agent.last_seen_at:%Y-%m-%d %H:%M:%S %Z}"

    @admin.display(description="serves")
    def serves(self, obj):
        if obj.shared:
            return "every project (shared)"
        return cut(", ".join(p.ident for p in obj.projects.all()) or "no project (its projects were deleted)", 12)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        form.instance.projects_assign(form.instance.projects.all())  # none: shared

    @admin.display(description="state", ordering="last_seen_at")
    def state(self, obj):
        if agent_is_connected(obj):
            badge = status_badge("connected")
        elif obj.last_seen_at is None:
            badge = status_badge("never connected", tone="waiting")
        else:
            badge = status_badge("offline", tone="failed")
        if obj.last_seen_at is None:
            return badge
        return format_html('{} <span class="help" title="last seen {}">{} ago</span>', badge,
                           f"{timezone.localtime(obj.last_seen_at):%Y-%m-%d %H:%M:%S %Z}",
                           timesince(obj.last_seen_at, depth=1))

    @admin.display(description="name", ordering="name")
    def name_shown(self, obj):
        return format_html('{}<div class="help">{}</div>', obj.name, obj.get_os_display())

    @admin.display(description="state, Docker daemon", ordering="last_seen_at")
    def state_and_daemon(self, obj):
        return format_html('{}<div>{}</div>', self.state(obj), self.daemon(obj))

    @admin.display(description="Docker daemon")
    def daemon(self, obj):
        if obj.daemon_ok is None:
            return "—"
        if obj.daemon_ok:
            return status_badge("ok", label=f"Docker {obj.daemon_version}" if obj.daemon_version else "answers")
        return format_html("{} {}", status_badge("failed", label="NOT ANSWERING"), cut(obj.daemon_error, 11))

    @admin.display(description="token")
    def token(self, obj):
        if not obj.token_hash:
            return "none (revoked or never made): `python manage.py agent_token NAME`, or the Replace token action"
        return f"made {obj.token_created_at:%Y-%m-%d %H:%M %Z}, stored hashed"

    @admin.display(description="free space", ordering="free_bytes")
    def free_space(self, obj):
        if obj.free_bytes is None:
            return "—"
        if not obj.keep_free_bytes:
            return human(obj.free_bytes)
        if obj.free_bytes < obj.keep_free_bytes:
            return format_html("{} {}", human(obj.free_bytes),
                               status_badge("shortfall", label=f"below {human(obj.keep_free_bytes)}"))
        return format_html('{} <span class="help">keeps {}</span>', human(obj.free_bytes), human(obj.keep_free_bytes))

    @admin.display(description="running", ordering="_running")
    def running_builds(self, obj):
        if not obj._running:
            return 0
        url = reverse("admin:builds_build_changelist") + "?" + urlencode(
            {"agent__id__exact": obj.pk, "status__exact": Build.Status.RUNNING})
        return format_html('<a href="{}">{}</a>', url, obj._running)

    @admin.action(description="Replace token (the new one is shown once)", permissions=("superuser",))
    def replace_token(self, request, queryset):
        tokens = [(agent.name, agents.agent_token_issue(name=agent.name)[1]) for agent in queryset]
        return token_shown_once(
            request, self.admin_site, title="New agent tokens", tokens=tokens,
            explanation="The new tokens (the old ones no longer work): put each in its agent's token file.",
            back_url=reverse("admin:builds_agent_changelist"))

    @admin.action(description="Revoke token (the agent stops at its next request)", permissions=("superuser",))
    def revoke_token(self, request, queryset):
        for agent in queryset:
            agents.agent_token_revoke(agent=agent)
        self.message_user(request, f"Revoked the tokens of {queryset.count()} agent(s).", messages.SUCCESS)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:  # a new agent has no daemon events yet
            return [fieldset for fieldset in fieldsets if "unattributed" not in fieldset[1]["fields"]]
        return fieldsets

    @admin.display(description="operations")
    def unattributed(self, obj):
        """The count, and the newest of them as a table (time, action, image or container)."""
        count, rows = agent_unattributed(obj, self.unattributed_shown)
        if not count:
            return "None recorded."
        caption = f"{count} kept" + (f"; the newest {len(rows)} shown" if count > len(rows) else "")
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (format_html('<span style="white-space:nowrap" title="{}">{}</span>',
                         f"{timezone.localtime(row['time']):%Y-%m-%d %H:%M:%S.%f %Z}",
                         f"{timezone.localtime(row['time']):%m-%d %H:%M:%S}"),
             format_html('<span title="{}">{}</span>', row["raw_action"], row["action"]),
             cut(row["what"], 30))
            for row in rows))
        return format_html('<p id="agent-unattributed-count">{}</p><table id="agent-unattributed">'
                           "<thead><tr><th>time</th><th>action</th><th>container (its image), or image</th>"
                           "</tr></thead>"
                           "<tbody>{}</tbody></table>", caption, body)

    @admin.display(description="free space over time")
    def free_space_chart(self, obj):
        """Free space before and after each of the last Free Disk Space runs, and as last reported, from 0 GiB."""
        points = [point for at, before, after in free_space_history(obj) for point in ((at, before), (at, after))]
        runs = len(points) // 2
        if obj.free_bytes is not None and obj.last_seen_at and (not points or obj.last_seen_at > points[-1][0]):
            points.append((obj.last_seen_at, obj.free_bytes))
        if not points:
            return "No Free Disk Space run yet, and no free space reported."
        values = [free for _, free in points]
        caption = f"{human(min(values))} – {human(max(values))} free"
        caption += f", over the last {runs} run(s)" if runs else ""
        if obj.free_bytes is not None:
            caption += f"; {human(obj.free_bytes)} free when last heard from"
        return free_space_svg(points, keep_free=obj.keep_free_bytes, caption=caption)  # rendered, escaped
