"""Reads for the admin's overview: what needs an administrator's eye now, as far as the user may see it.

Members see their projects' builds and images; agents and their clean-ups are the superusers' (builds/permissions.py).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from connections import roles

from .agents.selectors import connected_since
from .cleanup.agent import human
from .cleanup.registry import deletions_waiting
from .models import Agent, AgentCleanup, Build, CleanupRun, PushedImage

FAILED = (Build.Status.FAILED, Build.Status.ERROR, Build.Status.LOST)
RECENT = timedelta(hours=24)  # "recent" failures, and the clean-up shortfalls that make an agent short of space


@dataclass
class AgentTrouble:
    agent: Agent
    offline: bool
    short: str  # why it is short of space, "" when it is not


@dataclass
class Overview:
    since: datetime  # failures and shortfalls from this moment on
    running: int
    failures: int
    failed_builds: list[Build]  # the newest of them
    pending: int  # images of deleted builds waiting for deletion from their registry
    failed_deletions: int
    sees_agents: bool
    agents: int = 0
    agents_trouble: list[AgentTrouble] = field(default_factory=list)
    last_cleanup: CleanupRun | None = None

    @property
    def agents_offline(self) -> int:
        return sum(1 for trouble in self.agents_trouble if trouble.offline)

    @property
    def agents_short(self) -> int:
        return sum(1 for trouble in self.agents_trouble if trouble.short)


def overview_for(user, *, now=None, listed: int = 5) -> Overview:
    """The overview `user` may see: their projects' builds and images (all for a superuser); agents and the last
    server clean-up for superusers only."""
    now = now or timezone.now()
    since = (now - RECENT).replace(second=0, microsecond=0)  # a tidy link; a minute more at most
    everything = roles.is_superuser(user)
    projects = None if everything else roles.projects_with(user, roles.Role.VIEWER)
    builds = Build.objects.all()
    if projects is not None:
        builds = builds.filter(configuration__project__in=projects)
    failed = builds.filter(status__in=FAILED, finished_at__gte=since)
    waiting = deletions_waiting(projects)
    overview = Overview(
        since=since,
        running=builds.filter(status=Build.Status.RUNNING).count(),
        failures=failed.count(),
        failed_builds=list(failed.select_related("configuration", "agent").order_by("-finished_at", "-pk")[:listed]),
        pending=waiting[PushedImage.CleanupStatus.PENDING],
        failed_deletions=waiting[PushedImage.CleanupStatus.FAILED],
        sees_agents=everything,
    )
    if everything:
        overview.agents = Agent.objects.count()
        overview.agents_trouble = agents_in_trouble(now=now)
        overview.last_cleanup = CleanupRun.objects.order_by("-started_at", "-pk").first()
    return overview


def agents_in_trouble(*, now=None) -> list[AgentTrouble]:
    """Agents not connected, or short of space: less free than they keep free, or a recent Free Disk Space run
    that could not free what was required. Offline ones first, then by name."""
    now = now or timezone.now()
    shortfall = AgentCleanup.objects.filter(agent=OuterRef("pk"), met=False, at__gte=now - RECENT)
    agents = Agent.objects.annotate(_shortfall=Exists(shortfall)).filter(
        Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=connected_since(now)) | Q(_shortfall=True)
        | Q(keep_free_bytes__isnull=False, free_bytes__isnull=False, free_bytes__lt=F("keep_free_bytes")))
    heard_since = connected_since(now)
    troubles = [AgentTrouble(agent=agent, offline=agent.last_seen_at is None or agent.last_seen_at < heard_since,
                             short=short_of_space(agent, shortfall=agent._shortfall))
                for agent in agents]
    return sorted(troubles, key=lambda t: (not t.offline, t.agent.name))


def short_of_space(agent: Agent, *, shortfall: bool) -> str:
    """Why the agent is short of space ("" if it is not)."""
    if agent.keep_free_bytes and agent.free_bytes is not None and agent.free_bytes < agent.keep_free_bytes:
        return f"{human(agent.free_bytes)} free, below its keep-free {human(agent.keep_free_bytes)}"
    if shortfall:
        return "a Free Disk Space run in the last 24 h could not free what was required"
    return ""
