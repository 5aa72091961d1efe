"""Agents refresh their builds' expiring tokens themselves: the server's periodic refresh goes."""

from django.db import migrations


def remove(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(task="builds.refresh_expiring_logins").delete()
    PeriodicTask.objects.filter(task="builds.logout_silent_builds").update(
        name="Close builds whose agent or API client went silent")


class Migration(migrations.Migration):
    dependencies = [
        ("builds", "0007_agents"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(remove, migrations.RunPython.noop)]
