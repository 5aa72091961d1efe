"""`python manage.py apply_settings FILE.yaml`: apply a settings file (idempotent, atomic)."""

import sys

from django.core.management.base import BaseCommand, CommandError

from builds.settings_file import SettingsFileError, apply_settings, parse_settings, read_settings


class Command(BaseCommand):
    help = "Apply projects, connections, build configurations and agents from a YAML settings file."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the YAML settings file, or - for standard input")

    def handle(self, *args, file, **options):
        try:
            report = apply_settings(parse_settings(self.read(file)))
        except SettingsFileError as exc:
            count = len(exc.errors)
            raise CommandError(
                f"{file}: nothing was changed; {count} error{'s' if count != 1 else ''}:\n"
                + "\n".join(f"  {error}" for error in exc.errors)
            ) from None
        self.stdout.write(self.style.SUCCESS(f"Applied {file}: {report.summary()}"))

    @staticmethod
    def read(file: str) -> str:
        """The file's text. read_settings reads at most the size limit and one byte more, so a huge
        file or an endless stream is refused without being read into memory."""
        try:
            if file == "-":
                return read_settings(getattr(sys.stdin, "buffer", sys.stdin), "(standard input)")
            with open(file, "rb") as handle:
                return read_settings(handle, file)
        except OSError as exc:
            raise CommandError(f"{file}: cannot read the settings file: {exc.strerror}") from None
