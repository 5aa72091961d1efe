"""Celery queue names, defined once.

`server` runs on the dockersupport server: event ingestion and registry clean-up.
`agent.<name>` runs on one build host, next to its Docker daemon: registry login/logout and
local image clean-up. Start it there with `celery -A dockersupport_site worker -Q agent.<name>`.
"""

import enum


class Queue(enum.StrEnum):
    SERVER = "server"

    @staticmethod
    def for_agent(agent_name: str) -> str:
        return f"agent.{agent_name}"
