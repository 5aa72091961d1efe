#!/usr/bin/env python
"""Django's command-line utility for dockersupport."""
import os
import sys

# The build host's commands run without Django: a build host has none of the server's settings,
# run_build starts on every CI build step and report_push runs in a build's command (see agent/).
BUILD_HOST_COMMANDS = {"agent", "run_build", "report_push"}


def main():
    if len(sys.argv) > 1 and sys.argv[1] in BUILD_HOST_COMMANDS:
        from agent.cli import main as build_host_main

        sys.exit(build_host_main(sys.argv[1], sys.argv[2:]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dockersupport_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
