"""Celery tasks for builds, all on the server's queue. Thin: they take ids (never secrets) and call
services. Build hosts get their work through the agent protocol, never from the broker.
"""

import logging

from celery import shared_task
from django.db import OperationalError

from .agents.services import agents_silent_mark_lost
from .cleanup.registry import cleanup_run, deletions_retry_due
from .login.selectors import builds_silent
from .login.services import build_abandon
from .models import CleanupRun
from .operations.ingestion import batch_ingest
from .operations.services import event_batches_expire, event_batches_stale

log = logging.getLogger(__name__)


@shared_task(name="builds.logout_silent_builds", acks_late=True)
def logout_silent_builds() -> int:
    """Periodic: running builds nobody will finish are lost, and their agents erase their configs.

    Builds of agents silent past DOCKERSUPPORT_AGENT_TIMEOUT; API-driven builds that neither
    finished nor beat within DOCKERSUPPORT_API_BUILD_TIMEOUT. Also: event batches whose ingest task
    was lost are queued again, and ingested ones expire.
    """
    lost = agents_silent_mark_lost()
    for build in lost:
        log.warning("Build %s (id %s) is lost: agent %s is silent", build, build.pk, build.agent)
    silent = list(builds_silent())
    for build in silent:
        build_abandon(build=build, reason="no finish and no heartbeat from the API client in time")
        log.warning("Build %s (id %s) stopped beating; its agent %s logs it out", build, build.pk, build.agent)
    for batch_id in event_batches_stale():
        ingest_event_batch.delay(batch_id)
    event_batches_expire()
    return len(lost) + len(silent)


@shared_task(name="builds.ingest_event_batch", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def ingest_event_batch(batch_id: int) -> int:
    """Stores a batch an agent sent (its records wait in the database); a redelivered task changes nothing."""
    return batch_ingest(batch_id=batch_id)


@shared_task(name="builds.cleanup_builds", acks_late=True)
def cleanup_builds(trigger: str = CleanupRun.Trigger.SCHEDULE) -> dict:
    """Periodic (nightly by default), or asked for in the admin: retention, then registry deletion of the
    deleted builds' images."""
    run = cleanup_run(trigger=CleanupRun.Trigger(trigger))
    return {"run": run.pk, "builds_deleted": run.builds_deleted, "images_deleted": run.images_deleted}


@shared_task(name="builds.retry_pending_deletions", acks_late=True)
def retry_pending_deletions() -> dict:
    """Periodic: pending image deletions whose backoff has passed are tried again."""
    return deletions_retry_due()
