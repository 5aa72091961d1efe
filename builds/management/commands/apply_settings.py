"""`python manage.py apply_settings FILE.yaml`: apply a settings file (idempotent, atomic)."""

import sys

from django.core.management.base import BaseCommand, CommandError

from builds.settings_file import SettingsFileError, apply_settings, parse_settings


class Command(BaseCommand):
    help = "Apply projects, connections, build configurations and agents from a YAML settings file."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the YAML settings file, or - for standard input")

    def handle(self, *args, file, **options):
        try:
            if file == "-":
                text = sys.stdin.read()
            else:
                with open(file, encoding="utf-8") as handle:
                    text = handle.read()
        except OSError as exc:
            raise CommandError(f"{file}: cannot read the settings file: {exc.strerror}") from None
        try:
            report = apply_settings(parse_settings(text))
        except SettingsFileError as exc:
            count = len(exc.errors)
            raise CommandError(
                f"{file}: nothing was changed; {count} error{'s' if count != 1 else ''}:\n"
                + "\n".join(f"  {error}" for error in exc.errors)
            ) from None
        self.stdout.write(self.style.SUCCESS(f"Applied {file}: {report.summary()}"))
