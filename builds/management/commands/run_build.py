"""`python manage.py run_build CONFIG --agent AGENT [--number N] -- COMMAND [ARG...]`

Logs in to the configuration's registries, runs COMMAND with DOCKER_CONFIG and the agent's
DOCKER_HOST exported, streams its output, logs out, and exits with COMMAND's exit code.
"""

import argparse
import sys

from django.core.management.base import BaseCommand, CommandError

from builds import selectors, services
from builds.models import Agent, BuildConfiguration
from builds.runner import run_build


class Command(BaseCommand):
    help = "Run COMMAND as a build of CONFIG on AGENT, logged in to the configuration's registries."
    # Every CI build step pays for this command's start: system checks belong to deployment.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("configuration", metavar="CONFIG", help="the build configuration's id")
        parser.add_argument("--agent", required=True, help="the agent (build host) this runs on")
        parser.add_argument("--number", type=int, help="the build number (default: the next one)")
        parser.add_argument("--required-free", metavar="SIZE",
                            help="free this much on the agent's Docker data volume first (like 500M, 20G)")
        # Everything after `--` is the build's command; `command=[...]` does the same for call_command.
        parser.add_argument("--command", nargs="+", help=argparse.SUPPRESS)
        parser.usage = (
            "manage.py run_build CONFIG --agent AGENT [--number N] [--required-free SIZE] -- COMMAND [ARG...]"
        )

    def run_from_argv(self, argv):
        if "--" in argv:
            split = argv.index("--")
            argv, self.build_command = argv[:split], argv[split + 1:]
        super().run_from_argv(argv)

    def handle(self, *args, configuration, agent, number, command, required_free, **options):
        command = command or getattr(self, "build_command", None)
        if not command:
            raise CommandError("no COMMAND given: run_build CONFIG --agent AGENT -- COMMAND [ARG...]")
        if number is not None and number < 1:
            raise CommandError(f"--number {number}: a build number is 1 or more")
        required = None
        if required_free is not None:
            from builds.agent_cleanup import AgentCleanupError, parse_size

            try:
                required = parse_size(required_free)
            except AgentCleanupError as exc:
                raise CommandError(f"--required-free {required_free}: {exc}") from None
        try:
            config = selectors.configuration_get(configuration)
        except BuildConfiguration.DoesNotExist as exc:
            raise CommandError(str(exc)) from None
        try:
            host = Agent.objects.get(name=agent)
        except Agent.DoesNotExist:
            known = ", ".join(Agent.objects.values_list("name", flat=True)[:20]) or "none yet"
            raise CommandError(
                f"--agent {agent}: no such agent (known: {known}); add it in the admin or the settings file"
            ) from None
        try:
            result = run_build(configuration=config, agent=host, command=command, number=number,
                               required_free=required, out=sys.stdout, err=sys.stderr)
        except services.BuildStartError as exc:
            raise CommandError(str(exc)) from None
        sys.stdout.flush()
        sys.exit(result.exit_code)
