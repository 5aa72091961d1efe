"""Agents as the server sees them: their tokens (and their builds' tokens), what they report, the
jobs they pull.

Agents pull everything: the server never connects to a build host. A job is a row an agent
claims with a conditional UPDATE; whoever waits for it (the build API, `free_disk_space`) polls
the row. Tokens are stored as SHA-256 digests (connections/tokens.py).
"""

from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from agent import protocol
from connections.tokens import new_token, token_digest

from ..models import Agent, AgentJob, Build
from ..polling import wait_until
from .selectors import connected_since

JOB_NOTICE_KEY = "dockersupport:agent-jobs:{}"


# --- Tokens ------------------------------------------------------------------------------------------

@transaction.atomic
def agent_token_issue(*, name: str) -> tuple[Agent, str, bool]:
    """Creates the agent if needed and gives it a new token; the old one stops working at once.

    Returns (agent, token, created); the token exists nowhere else, so it is shown once.
    """
    agent = Agent.objects.select_for_update().filter(name=name).first()
    created = agent is None
    if created:
        agent = Agent(name=name)
        agent.full_clean()  # a name that is no valid id is refused with its reason
    token, agent.token_hash = new_token(protocol.AGENT_TOKEN_PREFIX)
    agent.token_created_at = timezone.now()
    agent.save()
    return agent, token, created


def build_token_issue(build: Build) -> str:
    """A new token for the build's later requests; the previous one stops working."""
    token, digest = new_token(protocol.BUILD_TOKEN_PREFIX)
    Build.objects.filter(pk=build.pk).update(token_hash=digest)
    build.token_hash = digest
    return token


def build_info(build: Build) -> protocol.BuildInfo:
    return protocol.BuildInfo(id=build.pk, number=build.number, configuration=build.configuration.ident,
                              project=build.configuration.project.ident)


def agent_token_revoke(*, agent: Agent) -> None:
    """The agent's next request is refused, and it stops."""
    Agent.objects.filter(pk=agent.pk).update(token_hash="", token_created_at=None)
    agent.token_hash, agent.token_created_at = "", None


def agent_authenticate(token: str) -> Agent | None:
    if not token.startswith(protocol.AGENT_TOKEN_PREFIX):
        return None
    return Agent.objects.filter(token_hash=token_digest(token)).first()


def build_authenticate(token: str) -> Build | None:
    if not token.startswith(protocol.BUILD_TOKEN_PREFIX):
        return None
    # Only while the build runs: an ended build's token opens nothing, whatever path ended it.
    return Build.objects.select_related("configuration__project", "agent").filter(
        token_hash=token_digest(token), status=Build.Status.RUNNING).first()


# --- What agents report ------------------------------------------------------------------------------

def _daemon_fields(daemon: protocol.DaemonState) -> dict:
    return {"daemon_ok": daemon.ok, "daemon_error": daemon.error[:2000], "daemon_version": daemon.version[:64],
            "reported_docker_host": daemon.docker_host[:255]}


def agent_connect(*, agent: Agent, hello: protocol.ConnectRequest) -> protocol.AgentSettings:
    """An agent (re)started: what it says of itself is kept, jobs it had taken are offered again."""
    now = timezone.now()
    with transaction.atomic():
        # A new session first: a job poll of the previous run still waiting on the server claims nothing now.
        Agent.objects.filter(pk=agent.pk).update(
            connected_at=now, last_seen_at=now, hostname=hello.hostname[:255], agent_version=hello.agent_version[:32],
            session=F("session") + 1, **_daemon_fields(hello.daemon),
        )
        # A job the previous run took but never finished: the new run does it (jobs are idempotent).
        AgentJob.objects.filter(agent=agent, status=AgentJob.Status.CLAIMED).update(
            status=AgentJob.Status.PENDING, claimed_at=None)
    session = Agent.objects.values_list("session", flat=True).get(pk=agent.pk)
    projects = sorted(agent.projects.values_list("ident", flat=True))
    return protocol.AgentSettings(
        name=agent.name, heartbeat_interval=settings.DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL,
        job_wait=settings.DOCKERSUPPORT_AGENT_JOB_WAIT, shared=agent.shared, projects=projects,
        docker_data_path=agent.docker_data_path, docker_host=agent.docker_host, session=session,
        cleanup=agent_cleanup_settings(agent),
    )


def agent_cleanup_settings(agent: Agent) -> protocol.CleanupSettings:
    """How the agent's Free Disk Space treats its images: sent when it connects and with every heartbeat."""
    return protocol.CleanupSettings(
        keep_patterns=[line.strip() for line in agent.keep_patterns.splitlines() if line.strip()],
        min_image_age=agent.min_image_age, keep_free_bytes=agent.keep_free_bytes)


SILENCE = "was silent for more than"  # how agents_silent_mark_lost words the error it records


@transaction.atomic
def agent_heartbeat(*, agent: Agent, beat: protocol.HeartbeatRequest) -> protocol.HeartbeatAnswer:
    """The agent is alive, and so are the builds it runs; it learns which of them the server closed.

    A build lost only because its agent seemed silent (a server outage looks the same from here) and
    that the agent still runs goes on. A run_build build of the agent that the agent does not know
    (the answer of its start never reached it) is lost once it is older than a few heartbeats.
    """
    now = timezone.now()
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=now, free_bytes=beat.free_bytes,
                                             **_daemon_fields(beat.daemon))
    Build.objects.filter(agent=agent, pk__in=beat.running_builds, status=Build.Status.LOST,
                         error__contains=SILENCE).update(status=Build.Status.RUNNING, finished_at=None, error="")
    running = Build.objects.filter(agent=agent, pk__in=beat.running_builds, status=Build.Status.RUNNING)
    still = set(running.values_list("pk", flat=True))
    running.update(heartbeat_at=now)
    grace = now - timedelta(seconds=max(3 * settings.DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL, 120))
    Build.objects.filter(agent=agent, status=Build.Status.RUNNING, started_by=Build.StartedBy.RUN_BUILD,
                         started_at__lt=grace).exclude(pk__in=beat.running_builds).update(
        status=Build.Status.LOST, finished_at=now, token_hash="",
        error="its agent does not know it (the answer to its start never reached the agent)")
    return protocol.HeartbeatAnswer(ended_builds=sorted(set(beat.running_builds) - still),
                                    cleanup=agent_cleanup_settings(agent))


def agent_seen(agent: Agent) -> None:
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())


@transaction.atomic
def agents_silent_mark_lost(now=None) -> list[Build]:
    """Running builds of agents silent past DOCKERSUPPORT_AGENT_TIMEOUT are lost (periodic task).

    When no agent at all was heard from in that time, the server is the one that was away (its web
    tier down, beat running): nothing is marked. A build marked lost while its agent still runs it
    is taken back at the agent's next heartbeat (its token is kept for that).
    """
    now = now or timezone.now()
    limit = connected_since(now)
    if Agent.objects.exists() and not Agent.objects.filter(last_seen_at__gte=limit).exists():
        return []
    builds = list(Build.objects.select_for_update().filter(status=Build.Status.RUNNING).filter(
        Q(agent__last_seen_at__lt=limit) | Q(agent__last_seen_at__isnull=True, started_at__lt=limit),
    ).select_related("agent", "configuration"))
    for build in builds:
        Build.objects.filter(pk=build.pk).update(
            status=Build.Status.LOST, finished_at=now,
            error=f"agent {build.agent} {SILENCE} {settings.DOCKERSUPPORT_AGENT_TIMEOUT} s",
        )
    return builds


# --- Jobs -------------------------------------------------------------------------------------------

def _notify(agent_id: int) -> None:
    # A long-poll of the agent checks this key often and the database seldom (see agent_api).
    try:
        cache.incr(JOB_NOTICE_KEY.format(agent_id))
    except ValueError:
        cache.set(JOB_NOTICE_KEY.format(agent_id), 1, timeout=None)


def job_notice(agent_id: int):
    return cache.get(JOB_NOTICE_KEY.format(agent_id))


def job_create(*, agent: Agent, kind: str, build: Build | None = None, payload: dict | None = None) -> AgentJob:
    job = AgentJob.objects.create(agent=agent, kind=kind, build=build, payload=payload or {},
                                  created_at=timezone.now())
    transaction.on_commit(lambda: _notify(agent.pk))
    return job


def jobs_claim(*, agent: Agent, session: int | None = None, limit: int = 10) -> list[protocol.Job]:
    """Takes the agent's pending jobs: a conditional UPDATE per job, so a second poller gets none twice,
    and only for the agent's current session (`session`), so a poll of an agent's previous run gets none."""
    claimed = []
    now = timezone.now()
    pending = AgentJob.objects.filter(agent=agent, status=AgentJob.Status.PENDING).select_related(
        "build__configuration__project")[:limit]
    for job in pending:
        condition = {"agent__session": session} if session is not None else {}
        taken = AgentJob.objects.filter(pk=job.pk, status=AgentJob.Status.PENDING, **condition).update(
            status=AgentJob.Status.CLAIMED, claimed_at=now)
        if taken:
            claimed.append(_job_message(job))
    return claimed


def _job_message(job: AgentJob) -> protocol.Job:
    message = protocol.Job(id=job.pk, kind=job.kind, build=build_info(job.build) if job.build else None)
    payload = job.payload
    if job.kind in (AgentJob.Kind.LOGIN, AgentJob.Kind.LOGOUT) and job.build is not None and job.build.is_running:
        # The build's token is made when the agent takes the job: it travels only to that agent (a
        # restarted agent that lost the build's token gets a new one with its logout).
        message.token = build_token_issue(job.build)
    if job.kind == AgentJob.Kind.LOGOUT:
        message.exit_code, message.lost = payload.get("exit_code"), payload.get("lost", "")
    if job.kind == AgentJob.Kind.FREE_DISK_SPACE:
        message.required_bytes, message.dry_run = payload["required_bytes"], payload.get("dry_run", False)
        message.reason = payload.get("reason", "")
    return message


def job_complete(*, agent: Agent, job_id: int, outcome: protocol.JobResult) -> bool:
    """False when the job is not this agent's or not taken (a late answer of a job given again)."""
    status = AgentJob.Status.DONE if outcome.ok else AgentJob.Status.FAILED
    return bool(AgentJob.objects.filter(pk=job_id, agent=agent, status=AgentJob.Status.CLAIMED).update(
        status=status, result=outcome.result, error=outcome.error[:5000], finished_at=timezone.now()))


def job_wait(job: AgentJob, timeout: float) -> AgentJob | None:
    """The job once the agent finished it; None after `timeout` seconds (the job stays for the agent)."""
    ended = AgentJob.objects.filter(pk=job.pk, status__in=[AgentJob.Status.DONE, AgentJob.Status.FAILED])
    if not wait_until(ended.exists, timeout=timeout):
        return None
    job.refresh_from_db(fields=["status", "result", "error", "finished_at"])
    return job


def job_withdraw(job: AgentJob) -> bool:
    """A job nobody waits for any more is not done later, unless the agent already took it."""
    return bool(AgentJob.objects.filter(pk=job.pk, status=AgentJob.Status.PENDING).delete()[0])
