"""`python manage.py test_connection PROJECT CONNECTION`: prints OK and what was verified, or the failure (exit 1)."""

import sys

from django.core.management.base import BaseCommand, CommandError

from connections.models import Connection
from connections.selectors import connection_get
from connections.services import connection_test


class Command(BaseCommand):
    help = "Test a connection: get its credentials and have its registry accept them."

    def add_arguments(self, parser):
        parser.add_argument("project", help="the project's id")
        parser.add_argument("connection", help="the connection's id within the project")

    def handle(self, *args, project, connection, **options):
        try:
            target = connection_get(project, connection)
        except Connection.DoesNotExist as exc:
            raise CommandError(str(exc)) from None
        result = connection_test(target)
        self.stdout.write(result.as_text())
        if not result.ok:
            sys.exit(1)
