"""`python manage.py cleanup_builds [--dry-run]`: apply retention rules, delete old builds and their pushed images."""

from django.core.management.base import BaseCommand

from builds.cleanup.registry import cleanup_run, plan_text, retention_plan


class Command(BaseCommand):
    help = ("Delete builds that retention rules no longer keep and, for configurations that ask for it, the images "
            "they pushed from their registries.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")

    def handle(self, *args, dry_run, **options):
        if dry_run:
            self.stdout.write(plan_text(retention_plan()))
            self.stdout.write("Dry run: nothing was changed.")
            return
        run = cleanup_run(progress=self.stdout.write)
        self.stdout.write(self.style.SUCCESS(
            f"Clean-up done: {run.builds_deleted} build(s) deleted; images: {run.images_deleted} deleted, "
            f"{run.images_kept} kept, {run.images_failed} failed, {run.images_retrying} to retry later."
        ))
