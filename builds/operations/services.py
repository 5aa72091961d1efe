"""Writes about the Docker operations agents send: batches held until ingested (ingestion.py does that).

An agent sends its daemon's operations in batches numbered by sequence; a batch is kept in the
database from its receipt until the ingest task (builds.ingest_event_batch) stores its records, so
that nothing an agent was told is held can be lost with a broker or a worker.
"""

from collections.abc import Callable
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from agent import protocol

from ..agents.services import agent_seen
from ..models import Agent, EventBatch
from ..polling import wait_until

REQUEUE_AFTER = timedelta(minutes=2)  # a batch not ingested by then is queued again (its task was lost)
KEEP_INGESTED = timedelta(days=1)  # an ingested batch's numbers tell a batch sent again for this long


@transaction.atomic
def events_receive(*, agent: Agent, batch: protocol.EventBatch, ingest: Callable[[int], object]) -> int:
    """Keeps a batch until it is ingested; returns the last sequence number the server holds of it.

    `ingest(batch_id)` queues its ingestion, once the batch is committed. The server knows batches by
    their first sequence number. A batch sent again (its answer was lost) is acknowledged only up to
    what the server holds of it, so that an agent which since gathered more records sends those
    again; if it is not ingested yet, it is queued again (the first task may have died with the
    server that took the batch; ingesting twice changes nothing).
    """
    if batch.last_seq < batch.first_seq:
        raise ValidationError(f"last_seq {batch.last_seq} is before first_seq {batch.first_seq}")
    row, created = EventBatch.objects.get_or_create(
        agent=agent, first_seq=batch.first_seq,
        defaults={"last_seq": batch.last_seq, "records": len(batch.records), "data": batch.records,
                  "received_at": timezone.now()},
    )
    agent_seen(agent)
    if created or row.ingested_at is None:
        transaction.on_commit(lambda: ingest(row.pk))
    return row.last_seq


def event_batches_stale(now=None) -> list[int]:
    """Batches waiting for ingestion for too long: their task was lost (a broker away, a worker killed).

    Their clock starts again: they are queued again by the caller.
    """
    limit = (now or timezone.now()) - REQUEUE_AFTER
    waiting = EventBatch.objects.filter(ingested_at__isnull=True, received_at__lt=limit)
    stale = list(waiting.values_list("pk", flat=True))
    EventBatch.objects.filter(pk__in=stale).update(received_at=timezone.now())
    return stale


def event_batches_expire(now=None) -> int:
    """Ingested batches older than KEEP_INGESTED go (their records are in DockerOperation)."""
    limit = (now or timezone.now()) - KEEP_INGESTED
    return EventBatch.objects.filter(ingested_at__lt=limit).delete()[0]


def event_batches_wait(*, agent: Agent, through: int, timeout: float, since=None) -> bool:
    """Waits until every batch of the agent up to sequence number `through`, received `since` (the
    build's start: older ones cannot hold its operations), is ingested."""
    pending = EventBatch.objects.filter(agent=agent, first_seq__lte=through, ingested_at__isnull=True)
    if since is not None:
        pending = pending.filter(received_at__gte=since)
    return wait_until(pending.exists, timeout=timeout, until=False)
