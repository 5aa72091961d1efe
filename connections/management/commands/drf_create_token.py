"""`python manage.py drf_create_token USER [options]`: a new API token for USER, printed alone on stdout.

DRF's command of this name, for our hashed tokens: `TOKEN=$(manage.py drf_create_token ci-bot)`
works. What the token may do is told on stderr.
"""

import argparse
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from connections import roles
from connections.models import Project
from connections.services import api_token_issue


def positive_days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (a whole number, at least 1)")
    return int(text)


class Command(BaseCommand):
    help = ("Make a new API token for USER and print it (only this once: it is stored hashed). Use it as "
            "`Authorization: Token <token>`.")

    def add_arguments(self, parser):
        parser.add_argument("username", metavar="USER", help="the user it acts for")
        parser.add_argument("-r", "--reset", action="store_true",
                            help="revoke the user's other API tokens")
        parser.add_argument("--name", default="drf_create_token", help="what uses it, e.g. the CI system's name")
        parser.add_argument("--expires-in", type=positive_days, metavar="DAYS",
                            help="it stops working after DAYS days (default: it does not expire)")
        parser.add_argument("--project", action="append", default=[], metavar="IDENT", dest="projects",
                            help="only this project and its subprojects (repeat for more; default: every project "
                                 "where the user has a role)")
        parser.add_argument("--read-only", action="store_true", help="it reads only: starts and changes nothing")

    def handle(self, *args, username, reset, name, expires_in, projects, read_only, **options):
        users = get_user_model()._default_manager
        try:
            user = users.get_by_natural_key(username)
        except users.model.DoesNotExist:
            raise CommandError(f"no user {username!r}: create it first (manage.py createsuperuser, or "
                               "in the admin)") from None
        found = {project.ident: project for project in Project.objects.filter(ident__in=projects)}
        unknown = [ident for ident in projects if ident not in found]
        if unknown:
            raise CommandError(f"no project {', '.join(repr(ident) for ident in unknown)}")
        expires_at = timezone.now() + timedelta(days=expires_in) if expires_in else None
        try:
            token, key = api_token_issue(user=user, name=name, expires_at=expires_at, projects=found.values(),
                                         read_only=read_only, replace=reset)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        if options["verbosity"] >= 1:
            self.stderr.write(self.describe(token, reset))
        self.stdout.write(key)

    @staticmethod
    def describe(token, reset: bool) -> str:
        scope = ", ".join(sorted(project.ident for project in token.projects.all())) or "every project of its user"
        limits = [f"projects: {scope}",
                  "read-only" if token.read_only else "reads and writes as its user's roles allow",
                  f"expires {token.expires_at:%Y-%m-%d %H:%M %Z}" if token.expires_at else "does not expire"]
        if reset:
            limits.append("the user's other API tokens are revoked")
        if not roles.project_roles(token.user):
            limits.append(f"{token.user} has no role on any project yet: it can do nothing until they get one")
        return (f"API token {token.name!r} of {token.user} ({token.prefix}...): {'; '.join(limits)}. "
                "It is shown only this once (it is stored hashed):")
