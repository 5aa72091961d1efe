#!/usr/bin/env python
"""Django's command-line utility for dockersupport."""
import os
import sys

# Commands that run on build hosts load the settings without the server-only apps: run_build
# starts on every CI build step, and those apps are most of its start-up time.
AGENT_COMMANDS = {"run_build"}


def default_settings_module(argv: list[str]) -> str:
    if len(argv) > 1 and argv[1] in AGENT_COMMANDS:
        return "dockersupport_site.agent_settings"
    return "dockersupport_site.settings"


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default_settings_module(sys.argv))
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
