"""Ingestion of Docker operations: batches of event records into operations, pushed images and
the agent's image tracking, with bulk statements.

Rows travel as plain dicts, not model instances, and on PostgreSQL each table gets one statement
a batch fed by one JSON document (`jsonb_to_recordset`): building and preparing a model instance
per event was most of the ingestion's time (benchmarks/event_ingestion.py). Other databases take
the same rows through `bulk_create`. A batch delivered twice changes nothing: operations are
unique per build, time, type, action and actor.
"""

import json
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import connections, router, transaction
from django.utils import timezone

from agent.references import registry_and_repository

from ..models import AgentImage, Build, DockerOperation, EventBatch, PushedImage

OPERATION_FIELDS = ("time_nano", "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest",
                    "container_id", "container_name", "exit_code", "attributes")
_Action = DockerOperation.Action
IMAGE_CREATING_ACTIONS = {_Action.PULL, _Action.BUILD, _Action.IMPORT, _Action.LOAD, _Action.TAG}


def batch_ingest(*, batch_id: int) -> int:
    """Stores an agent's batch: each record once for each of the builds the agent gave it to.

    Only the agent's own builds count: a record naming another agent's build is not stored for it.
    Returns the number of operations stored (or already there); an ingested batch is not read again.
    """
    batch = EventBatch.objects.select_related("agent").filter(pk=batch_id, ingested_at__isnull=True).first()
    if batch is None:
        return 0
    records = batch.data
    named = {build for record in records for build in record.get("builds") or [] if isinstance(build, int)}
    own = set(Build.objects.filter(agent=batch.agent, pk__in=named).values_list("pk", flat=True))
    rows = [
        {"build_id": build, "agent_id": batch.agent_id, **{name: r[name] for name in OPERATION_FIELDS}}
        for r in records for build in dict.fromkeys(r.get("builds") or []) if build in own
    ]
    with transaction.atomic():
        _insert_operations(rows)
        _record_pushed_images([row for row in rows if row["action"] == DockerOperation.Action.PUSH])
        _track_agent_images(batch.agent_id, rows)
        EventBatch.objects.filter(pk=batch.pk).update(ingested_at=timezone.now(), data=[])
    return len(rows)


def _moment(time_nano: int) -> datetime:
    return datetime.fromtimestamp(time_nano / 1e9, tz=dt_timezone.utc)


def _postgresql(model):
    connection = connections[router.db_for_write(model)]
    return connection if connection.vendor == "postgresql" else None


def _insert_operations(rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of the rows, as `bulk_create(ignore_conflicts=True)` does."""
    connection = _postgresql(DockerOperation)
    if connection is None or not rows:
        DockerOperation.objects.bulk_create([DockerOperation(**row, time=_moment(row["time_nano"])) for row in rows],
                                            ignore_conflicts=True, batch_size=1000)
        return
    fields = [DockerOperation._meta.get_field(name) for name in ("build", "agent", *OPERATION_FIELDS)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    # Types without length, as bulk_create's UNNEST: too long a value fails the INSERT, never truncated.
    types = ", ".join(f"{quote(f.column)} {f.db_type(connection).split('(')[0]}" for f in fields)
    time, time_nano = (quote(DockerOperation._meta.get_field(name).column) for name in ("time", "time_nano"))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(DockerOperation._meta.db_table)} ({columns}, {time})"
            f" SELECT {columns}, to_timestamp({time_nano} / 1e9)"
            f" FROM jsonb_to_recordset(%s::jsonb) AS r({types}) ON CONFLICT DO NOTHING",
            [json.dumps(rows)],
        )


def _record_pushed_images(pushes: list[dict]) -> None:
    if not pushes:
        return
    builds = Build.objects.select_related("configuration").in_bulk({p["build_id"] for p in pushes})
    images = []
    for push in pushes:
        build = builds[push["build_id"]]
        registry, repository = registry_and_repository(push["image"])
        images.append(PushedImage(
            build=build, project_id=build.configuration.project_id, configuration_ident=build.configuration.ident,
            build_number=build.number, registry=registry, repository=repository, tag=push["tag"],
            digest=push["digest"], pushed_at=_moment(push["time_nano"]),
        ))
    PushedImage.objects.bulk_create(images, ignore_conflicts=True)


def _image_reference(row: dict) -> str:
    if row["image"]:
        return f"{row['image']}:{row['tag']}" if row["tag"] else row["image"]
    return row["attributes"].get("image_id", "")


def _track_agent_images(agent_id: int, rows: list[dict]) -> None:
    """Images builds created or pulled on the agent, and their last use by a build (agent clean-up)."""
    latest: dict[str, dict] = {}
    created: dict[str, dict] = {}
    for row in rows:
        reference = _image_reference(row)
        if not reference:
            continue
        if reference not in latest or row["time_nano"] > latest[reference]["time_nano"]:
            latest[reference] = row
        if row["action"] in IMAGE_CREATING_ACTIONS and reference not in created:
            created[reference] = row
    if not latest:
        return
    AgentImage.objects.bulk_create([
        AgentImage(agent_id=agent_id, reference=reference, image_id=row["attributes"].get("image_id", ""),
                   created_by=row["action"], first_seen_at=_moment(row["time_nano"]),
                   last_used_at=_moment(row["time_nano"]), last_build_id=row["build_id"])
        for reference, row in created.items()
    ], ignore_conflicts=True)
    connection = _postgresql(AgentImage)
    if connection is None:
        for reference, row in latest.items():
            # A replayed older batch must not move a last use back in time.
            used = _moment(row["time_nano"])
            AgentImage.objects.filter(agent_id=agent_id, reference=reference, last_used_at__lt=used).update(
                last_used_at=used, last_build_id=row["build_id"])
        return
    column = {name: connection.ops.quote_name(AgentImage._meta.get_field(name).column)
              for name in ("agent", "reference", "last_used_at", "last_build")}
    uses = json.dumps([
        {"reference": reference, "last_used_at": _moment(row["time_nano"]).isoformat(),
         "last_build_id": row["build_id"]}
        for reference, row in latest.items()
    ])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(AgentImage._meta.db_table)} AS a"
            f" SET {column['last_used_at']} = u.last_used_at, {column['last_build']} = u.last_build_id"
            " FROM jsonb_to_recordset(%s::jsonb) AS u(reference text, last_used_at timestamptz, last_build_id bigint)"
            f" WHERE a.{column['agent']} = %s AND a.{column['reference']} = u.reference"
            f" AND a.{column['last_used_at']} < u.last_used_at",  # never back in time (a replayed older batch)
            [uses, agent_id],
        )
