"""`python manage.py export_settings`: print the settings as YAML, without any secret."""

from django.core.management.base import BaseCommand

from builds.settings_file import dump_settings, export_settings


class Command(BaseCommand):
    help = "Print projects, connections, build configurations and agents as a YAML settings file (no secrets)."

    def handle(self, *args, **options):
        self.stdout.write(
            "# Exported by dockersupport. Secrets are not exported: applying this file keeps the stored ones.\n"
            + dump_settings(export_settings()),
            ending="",
        )
