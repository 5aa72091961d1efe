"""celery-beat's periodic tasks in our admin: the schedule and its last run in a list that fits a laptop screen
(the task's start time, one-off flag and interval are on its page)."""

from django.contrib import admin
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    list_display = ("name", "enabled", "scheduler", "last_run_at")
    list_filter = ["enabled", "task"]
