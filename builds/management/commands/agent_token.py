"""`python manage.py agent_token NAME`: a new token for agent NAME (created if needed), printed once."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from builds.agents.services import agent_token_issue


class Command(BaseCommand):
    help = ("Create agent NAME if needed and give it a new token, printed once (the previous token stops "
            "working). Put it in the agent's token file: manage.py agent --server URL --token-file FILE.")

    def add_arguments(self, parser):
        parser.add_argument("name", metavar="NAME", help="the agent's name (lowercase letters, digits, . _ -)")

    def handle(self, *args, name, **options):
        try:
            agent, token, created = agent_token_issue(name=name)
        except ValidationError as exc:
            raise CommandError(f"{name}: {'; '.join(exc.messages)}") from None
        self.stderr.write(f"{'Created agent' if created else 'New token for agent'} {agent}; it is shown only "
                          "this once and is stored hashed (the previous token no longer works):")
        self.stdout.write(token)
