"""`python manage.py free_disk_space --agent AGENT --required SIZE [--dry-run]`: asks the agent and waits."""

import sys

from django.core.management.base import BaseCommand, CommandError

from builds.agents.selectors import agent_get
from builds.cleanup.agent import AgentCleanupError, free_disk_space_request, parse_size
from builds.models import Agent


class Command(BaseCommand):
    help = ("Have AGENT remove images that builds created or pulled on it, least recently used first, until SIZE is "
            "free on its Docker data volume. Exits 1 when that cannot be reached.")

    def add_arguments(self, parser):
        parser.add_argument("--agent", required=True)
        parser.add_argument("--required", required=True, metavar="SIZE", help="like 500M, 20G or 1T (binary units)")
        parser.add_argument("--dry-run", action="store_true", help="print the ordered plan and change nothing")

    def handle(self, *args, agent, required, dry_run, **options):
        try:
            target = agent_get(agent)
        except Agent.DoesNotExist:
            raise CommandError(f"--agent {agent}: no such agent") from None
        try:
            size = parse_size(required)
        except AgentCleanupError as exc:
            raise CommandError(f"--required {required}: {exc}") from None
        try:
            result = free_disk_space_request(target, size, dry_run=dry_run, reason="free_disk_space command")
        except AgentCleanupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(result["text"])
        if not result["met"]:
            sys.exit(1)
