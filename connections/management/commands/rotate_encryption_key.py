"""`python manage.py rotate_encryption_key`: re-encrypt all secrets with the newest key."""

from django.core.management.base import BaseCommand

from connections.services import connection_rotate_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key of DOCKERSUPPORT_ENCRYPTION_KEY. "
        "Put the new key first (new,old), run this, then remove the old key."
    )

    def handle(self, *args, **options):
        count = connection_rotate_secrets()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted the secrets of {count} connection(s)."))
