"""Admin of the event records ingestion set aside: what could not be stored, and why (read-only)."""

import json

from django.contrib import admin
from django.utils.html import format_html

from ..models import SetAsideRecord
from .base import ReadOnlyAdmin


@admin.register(SetAsideRecord)
class SetAsideRecordAdmin(ReadOnlyAdmin):
    """Superusers only: a record may belong to builds of several projects (one daemon, overlapping builds)."""

    project_path = None
    list_display = ("at", "agent", "first_seq", "short_error")
    list_select_related = ("agent",)
    list_filter = (("agent", admin.RelatedOnlyFieldListFilter),)
    search_fields = ("error",)
    date_hierarchy = "at"
    fields = ("at", "agent", "first_seq", "error", "record_shown")
    readonly_fields = fields

    @admin.display(description="error")
    def short_error(self, obj):
        return obj.error if len(obj.error) <= 120 else obj.error[:119] + "…"

    @admin.display(description="record (without the builds' secrets)")
    def record_shown(self, obj):
        if obj.record is None:
            return "—"
        return format_html("<pre>{}</pre>", json.dumps(obj.record, indent=2, sort_keys=True, ensure_ascii=False))
