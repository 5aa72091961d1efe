"""Admin of server clean-up: the images builds pushed (and their deletion), and clean-up runs."""

from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html_join

from connections.admin_roles import refuse_unless_each

from ..cleanup.registry import pushed_images_retry, pushed_images_settle_owner
from ..models import CleanupRun, PushedImage
from ..tasks import retry_pending_deletions
from .base import ReadOnlyAdmin


@admin.register(PushedImage)
class PushedImageAdmin(ReadOnlyAdmin):
    list_display = ("reference", "tag", "configuration_ident", "build_number", "cleanup_status", "cleanup_reason",
                    "owner_uncertain", "connection", "cleanup_attempts", "next_attempt_at", "pushed_at")
    list_select_related = ("build", "connection__project")
    list_filter = ("cleanup_status", "owner_uncertain", "registry", ("build", admin.EmptyFieldListFilter))
    search_fields = ("repository", "tag", "digest", "configuration_ident")
    actions = ("retry_deletion", "settle_owner")

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
