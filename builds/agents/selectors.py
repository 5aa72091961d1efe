"""Reads about agents."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ..models import Agent


def agent_get(name: str) -> Agent:
    """Raises Agent.DoesNotExist naming the agent."""
    try:
        return Agent.objects.get(name=name)
    except Agent.DoesNotExist:
        raise Agent.DoesNotExist(f"no agent '{name}'") from None


def connected_since(now=None):
    """An agent last heard from at or after this moment is taken as running (DOCKERSUPPORT_AGENT_TIMEOUT)."""
    return (now or timezone.now()) - timedelta(seconds=settings.DOCKERSUPPORT_AGENT_TIMEOUT)


def agent_is_connected(agent: Agent) -> bool:
    """Heard from recently enough to be taken as running."""
    return agent.last_seen_at is not None and agent.last_seen_at >= connected_since()
