"""Celery tasks for builds, all on the server (queue `server`). Thin: they take ids (never secrets),
load rows and call services. Build hosts get their work through the agent protocol, never from
the broker.
"""

import logging
from datetime import timedelta

from django.db import OperationalError
from django.utils import timezone

from dockersupport_site.celery import app

from . import agent_services, ingestion, selectors, services
from .models import EventBatch

log = logging.getLogger(__name__)


@app.task(name="builds.logout_silent_builds", acks_late=True)
def logout_silent_builds() -> int:
    """Periodic: running builds nobody will finish are lost, and their agents erase their configs.

    Builds of agents silent past DOCKERSUPPORT_AGENT_TIMEOUT; API-driven builds that neither
    finished nor beat within DOCKERSUPPORT_API_BUILD_TIMEOUT.
    """
    lost = agent_services.agents_silent_mark_lost()
    for build in lost:
        log.warning("Build %s (id %s) is lost: agent %s is silent", build, build.pk, build.agent)
    silent = list(selectors.builds_silent())
    for build in silent:
        services.build_abandon(build=build, reason="no finish and no heartbeat from the API client in time")
        log.warning("Build %s (id %s) stopped beating; its agent %s logs it out", build, build.pk, build.agent)
    # A batch whose ingest task was lost is queued again; ingested ones are kept a day (their numbers
    # tell a batch sent again), then go.
    for batch_id in agent_services.event_batches_stale():
        ingest_event_batch.delay(batch_id)
    EventBatch.objects.filter(ingested_at__lt=timezone.now() - timedelta(days=1)).delete()
    return len(lost) + len(silent)


@app.task(name="builds.ingest_event_batch", acks_late=True, reject_on_worker_lost=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def ingest_event_batch(batch_id: int) -> int:
    """Stores a batch an agent sent (its records wait in the database); a redelivered task changes nothing."""
    return ingestion.batch_ingest(batch_id=batch_id)


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
