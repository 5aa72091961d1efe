"""Default schedules of server clean-up (nightly) and of retrying pending image deletions; editable in the admin."""

from django.db import migrations


def create(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    nightly, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="2", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC")
    PeriodicTask.objects.get_or_create(name="Server clean-up: retention and pushed images", defaults={
        "task": "builds.cleanup_builds", "crontab": nightly, "queue": "server"})
    every_ten, _ = IntervalSchedule.objects.get_or_create(every=10, period="minutes")
    PeriodicTask.objects.get_or_create(name="Retry pending image deletions", defaults={
        "task": "builds.retry_pending_deletions", "interval": every_ten, "queue": "server"})


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task__in=["builds.cleanup_builds", "builds.retry_pending_deletions"]).delete()


class Migration(migrations.Migration):
    dependencies = [("builds", "0003_cleanup"), ("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [migrations.RunPython(create, remove)]
