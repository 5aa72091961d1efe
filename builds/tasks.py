"""Celery tasks for builds. Thin: they take ids (never secrets), load rows and call services.

Login, logout and token refresh run on the build host, in the agent's own queue `agent.<name>`;
the periodic sweeps run on the server and send per-build work to each agent's queue.
"""

import logging

from django.db import OperationalError

from dockersupport_site.celery import app
from dockersupport_site.queues import Queue

from . import ingestion, selectors, services
from .models import Build

log = logging.getLogger(__name__)

AGENT_TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True}


@app.task(name="builds.login", **AGENT_TASK_OPTIONS)
def build_login(build_id: int) -> dict:
    """Logs a build in on its agent; answers what the API returns (no secret in it)."""
    build = Build.objects.select_related("configuration", "agent").get(pk=build_id)
    if not build.is_running:
        return {"ok": False, "error": f"build {build} is not running ({build.status})"}
    if build.docker_config:
        services.build_logout(build=build)  # a redelivered message starts from a clean config
    try:
        result = services.build_login(build=build)
    except services.BuildLoginError as exc:
        return {"ok": False, "error": str(exc)}
    if not Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).exists():
        # The API gave up waiting and closed the build meanwhile: nobody will use this login.
        services.build_logout(build=build)
        return {"ok": False, "error": f"build {build} was closed while logging in"}
    return {"ok": True, "docker_config": result.docker_config, "logged_in": result.logged_in,
            "warnings": result.warnings}


@app.task(name="builds.finish", **AGENT_TASK_OPTIONS)
def build_finish(build_id: int, exit_code: int) -> dict:
    build = Build.objects.select_related("configuration", "agent").get(pk=build_id)
    build = services.build_finish(build=build, exit_code=exit_code)
    return {"ok": True, "status": build.status}


@app.task(name="builds.logout", **AGENT_TASK_OPTIONS)
def build_logout(build_id: int) -> dict:
    build = Build.objects.get(pk=build_id)
    return {"ok": True, "removed": services.build_logout(build=build)}


@app.task(name="builds.refresh_logins", **AGENT_TASK_OPTIONS)
def build_refresh_logins(build_id: int) -> dict:
    build = Build.objects.select_related("configuration", "agent").get(pk=build_id)
    return {"ok": True, "refreshed": services.build_refresh_logins(build=build)}


@app.task(name="builds.logout_silent_builds", acks_late=True)
def logout_silent_builds() -> int:
    """Periodic: builds whose process died (no heartbeat) are closed and logged out on their agent."""
    count = 0
    for build in selectors.builds_silent():
        services.build_abandon(build=build, reason="no heartbeat: the build's process died; logged out")
        build_logout.apply_async(args=[build.pk], queue=Queue.for_agent(build.agent.name))
        log.warning("Build %s (id %s) stopped beating; logging it out on agent %s", build, build.pk, build.agent)
        count += 1
    return count


@app.task(name="builds.refresh_expiring_logins", acks_late=True)
def refresh_expiring_logins() -> int:
    """Periodic: running builds whose ECR token is about to expire get a fresh one on their agent."""
    builds = list(selectors.builds_needing_token_refresh())
    for build in builds:
        build_refresh_logins.apply_async(args=[build.pk], queue=Queue.for_agent(build.agent.name))
    return len(builds)


@app.task(name="builds.ingest_events", acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def ingest_events(agent_id: int, records: list[dict], build_id: int | None = None) -> int:
    """Stores a batch of Docker operations (server queue); a redelivered batch changes nothing."""
    return ingestion.operations_ingest(agent_id=agent_id, records=records, build_id=build_id)


@app.task(name="builds.ingest_event_batch", acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def ingest_event_batch(batch_id: int, records: list[dict]) -> int:
    """Stores a batch an agent sent (server queue); a redelivered batch changes nothing."""
    return ingestion.batch_ingest(batch_id=batch_id, records=records)


@app.task(name="builds.cleanup_builds", acks_late=True)
def cleanup_builds() -> dict:
    """Periodic (nightly by default): retention, then registry deletion of the deleted builds' images."""
    from .models import CleanupRun
    from .server_cleanup import cleanup_run

    run = cleanup_run(trigger=CleanupRun.Trigger.SCHEDULE)
    return {"run": run.pk, "builds_deleted": run.builds_deleted, "images_deleted": run.images_deleted}


@app.task(name="builds.retry_pending_deletions", acks_late=True)
def retry_pending_deletions() -> dict:
    """Periodic: pending image deletions whose backoff has passed are tried again."""
    from django.utils import timezone

    from .models import CleanupRun, PushedImage
    from .server_cleanup import pending_deletions_process

    due = PushedImage.objects.filter(cleanup_status=PushedImage.CleanupStatus.PENDING,
                                     next_attempt_at__lte=timezone.now())
    if not due.exists():
        return {}
    run = CleanupRun.objects.create(trigger=CleanupRun.Trigger.RETRY, started_at=timezone.now())
    tally = pending_deletions_process(run=run)
    run.finished_at = timezone.now()
    run.save()
    return tally


@app.task(name="builds.free_disk_space", **AGENT_TASK_OPTIONS)
def free_disk_space(agent_id: int, required_bytes: int, reason: str = "scheduled") -> dict:
    """Agent queue: frees `required_bytes` on the agent's Docker data volume (Free Disk Space)."""
    from .agent_cleanup import free_disk_space as run
    from .models import Agent

    result = run(Agent.objects.get(pk=agent_id), required_bytes, reason=reason)
    return {"met": result.met, "free_after": result.free_after, "removed": len(result.removed),
            "shortfall": result.shortfall}
