"""Admin of server clean-up: the images builds pushed (and their deletion), and clean-up runs."""

from django.contrib import admin, messages
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from connections.admin_roles import refuse_unless_each
from dockersupport_site.admin_display import cut, status_badge, tone_of

from ..cleanup.registry import pushed_images_retry, pushed_images_settle_owner
from ..models import CleanupRun, PushedImage
from ..tasks import retry_pending_deletions
from .base import ReadOnlyAdmin


def pushed_image_status(image: PushedImage):
    """Its clean-up status as a badge; "retained" while its build runs (clean-up has decided nothing yet: the
    API's value stays `kept`)."""
    status = PushedImage.CleanupStatus
    if image.cleanup_status == status.KEPT and image.build is not None and image.build.is_running:
        return status_badge(image.cleanup_status, label="retained", tone="running")
    return status_badge(image.cleanup_status, label=image.get_cleanup_status_display())


@admin.register(PushedImage)
class PushedImageAdmin(ReadOnlyAdmin):
    # Three columns of two lines each: with the sidebar and the filters, a 1366 px window leaves about 700 px.
    list_display = ("image", "build_shown", "status")
    list_display_links = ("image",)
    list_select_related = ("build", "connection__project")
    list_filter = ("cleanup_status", "owner_uncertain", "reported", "registry", ("build", admin.EmptyFieldListFilter))
    search_fields = ("repository", "tag", "digest", "configuration_ident")
    actions = ("retry_deletion", "settle_owner")

    class Media:
        css = {"all": ("builds/cleanup.css",)}  # copying: dockersupport/copy.js, on every admin page

    @admin.display(description="image", ordering="repository")
    def image(self, obj):
        tag = format_html('<div class="help">tag {}</div>', cut(obj.tag, 16)) if obj.digest and obj.tag else ""
        return format_html('{} <button type="button" class="button ds-copy-button" data-copy="{}" title="Copy {}">'
                           'Copy</button>{}', cut(obj.reference, 19), obj.reference, obj.reference, tag)

    @admin.display(description="build, pushed", ordering="-pushed_at")
    def build_shown(self, obj):
        name = cut(f"{obj.configuration_ident} #{obj.build_number}", 12)
        if obj.build is None:
            name = format_html('{} <span class="help">(deleted)</span>', name)
        else:
            name = format_html('<a href="{}">{}</a>', reverse("admin:builds_build_change", args=[obj.build_id]), name)
        return format_html('{}<div class="help">{}</div>', name,
                           f"{timezone.localtime(obj.pushed_at):%Y-%m-%d %H:%M}")

    @admin.display(description="clean-up", ordering="cleanup_status")
    def status(self, obj):
        parts = [pushed_image_status(obj)]
        if obj.owner_uncertain:
            parts.append(status_badge("owner uncertain", tone="waiting"))
        if obj.reported:
            parts.append(status_badge("reported", tone="neutral"))
        if obj.cleanup_status == PushedImage.CleanupStatus.PENDING and obj.next_attempt_at:
            parts.append(format_html('<span class="help">attempt {}, next {}</span>', obj.cleanup_attempts + 1,
                                     f"{timezone.localtime(obj.next_attempt_at):%m-%d %H:%M}"))
        elif obj.cleanup_attempts:
            parts.append(format_html('<span class="help">{} attempt(s)</span>', obj.cleanup_attempts))
        why = obj.cleanup_reason or obj.owner_note
        if why:
            parts.append(format_html('<div class="help">{}</div>', cut(why, 18)))
        if obj.connection:
            parts.append(format_html('<div class="help">with {}</div>', cut(str(obj.connection), 16)))
        return format_html_join(" ", "{}", ((part,) for part in parts))

    def has_retry_permission(self, request):
        return request.user.has_perm("builds.change_pushedimage")  # admin of some project

    def has_settle_permission(self, request):
        return request.user.has_perm("builds.change_pushedimage")

    @admin.action(description="Settle owner: this build pushed it", permissions=("settle",))
    def settle_owner(self, request, queryset):
        if not refuse_unless_each(self, request, "builds.change_pushedimage", queryset, "settle the owner of"):
            return
        count = pushed_images_settle_owner(queryset, user=request.user)
        self.message_user(request, f"{count} image(s) settled as pushed by their build: no longer of uncertain owner; "
                                   "those of deleted builds are deleted at the next clean-up run.",
                          messages.SUCCESS if count else messages.WARNING)

    @admin.action(description="Retry deletion from the registry", permissions=("retry",))
    def retry_deletion(self, request, queryset):
        if not refuse_unless_each(self, request, "builds.change_pushedimage", queryset, "retry the deletion of"):
            return
        count = pushed_images_retry(queryset)
        if count:
            transaction.on_commit(retry_pending_deletions.delay)
        self.message_user(request, f"{count} image(s) will be deleted again (failed or pending ones only).",
                          messages.SUCCESS if count else messages.WARNING)


@admin.register(CleanupRun)
class CleanupRunAdmin(ReadOnlyAdmin):
    project_path = None  # site-wide runs: superusers only
    list_display = ("started", "trigger", "outcome", "builds_deleted", "images")
    list_display_links = ("started",)
    list_filter = ("trigger",)
    date_hierarchy = "started_at"
    readonly_fields = ("trigger", "started_at", "finished_at", "builds_deleted", "images_deleted", "images_kept",
                       "images_failed", "images_retrying", "report", "error")
    fields = readonly_fields
    exclude = ("details",)

    class Media:
        css = {"all": ("builds/cleanup.css",)}

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return f"{timezone.localtime(obj.started_at):%Y-%m-%d %H:%M}"

    @admin.display(description="outcome, duration")
    def outcome(self, obj):
        if obj.error:
            badge = status_badge("error")
        elif obj.finished_at is None:
            badge = status_badge("running")
        elif obj.images_failed:
            badge = status_badge("failed", label="images failed")
        elif obj.images_retrying:
            badge = status_badge("retrying")
        else:
            badge = status_badge("done")
        return format_html('{}<div class="help">{}</div>', badge, self.duration(obj))

    @admin.display(description="duration")
    def duration(self, obj):
        if obj.finished_at is None:
            return "—"
        seconds = int((obj.finished_at - obj.started_at).total_seconds())
        if seconds >= 3600:
            return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
        return f"{seconds // 60}m {seconds % 60:02d}s"

    @admin.display(description="images")
    def images(self, obj):
        return format_html('{} deleted<div class="help">{} kept, {} failed, {} to retry</div>', obj.images_deleted,
                           obj.images_kept, obj.images_failed, obj.images_retrying)

    @admin.display(description="what happened")
    def report(self, obj):
        # The outcome word coloured by its meaning (builds/static/builds/cleanup.css), in the words it was recorded.
        return format_html_join("", '<div class="ds-outcome ds-outcome-{}">{}: <strong>{}</strong>{}</div>', (
            (tone_of(entry.get("outcome") or ""), entry.get("build") or entry.get("image"), entry.get("outcome"),
             f" — {entry['reason']}" if entry.get("reason") else "")
            for entry in obj.details
        )) or "—"
