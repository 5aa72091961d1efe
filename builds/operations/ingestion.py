"""Ingestion of Docker operations: batches of event records into operations, pushed images and
the agent's image tracking, with bulk statements.

Rows travel as plain dicts, not model instances, and on PostgreSQL each table gets one statement
a batch fed by one JSON document (`jsonb_to_recordset`): building and preparing a model instance
per event was most of the ingestion's time (benchmarks/event_ingestion.py). Other databases take
the same rows through `bulk_create`. A batch delivered twice changes nothing: an operation is
unique per build and identity (records.py).

No batch is lost for one record: records are made to fit their columns first (records.py), and
when the database still refuses the batch, its records are stored one by one, each in a savepoint;
a record it refuses is set aside with the error (SetAsideRecord, in the admin) and the rest stored.

A record the agent could give to no build (`"builds": []` and `"unattributed": true`: no build's own Docker
endpoint asked for it) is kept on the agent instead (UnattributedOperation, its newest UNATTRIBUTED_KEPT).
"""

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db import DatabaseError, OperationalError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from agent.references import registry_and_repository, registry_identity
from connections.registries import is_digest, is_repository_name, is_tag

from ..models import (
    UNATTRIBUTED_KEPT,
    AgentImage,
    Build,
    DockerOperation,
    EventBatch,
    LoginConnection,
    PushedImage,
    SetAsideRecord,
    UnattributedOperation,
)
from .records import NO_SECRETS, BuildSecrets, RecordError, build_secrets, operation_fields, text_clean, value_clean

log = logging.getLogger(__name__)

OPERATION_FIELDS = ("time_nano", "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest",
                    "container_id", "container_name", "exit_code", "attributes")
# An operation no build asked for keeps these (no attributes: nobody's labels and command lines are kept for it).
UNATTRIBUTED_FIELDS = ("time_nano", "event_type", "action", "raw_action", "image", "tag", "digest", "container_id",
                       "container_name", "exit_code", "identity")
_Action = DockerOperation.Action
IMAGE_CREATING_ACTIONS = {_Action.PULL, _Action.BUILD, _Action.IMPORT, _Action.LOAD, _Action.TAG}
ERROR_LIMIT = 2_000  # characters of a database error kept with a set-aside record
_PUSHED = {name: PushedImage._meta.get_field(name).max_length for name in ("registry", "repository", "tag", "digest")}
_REFERENCE_LIMIT = AgentImage._meta.get_field("reference").max_length
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class _Entry:
    """One record of the batch: its operation rows (one per build it was given to) and its pushed images."""

    record: dict
    rows: list[dict]
    images: list[PushedImage] = field(default_factory=list)
    trackable: bool = True  # its image reference is as the agent sent it: agent clean-up may act on it
    unattributed: list[UnattributedOperation] = field(default_factory=list)  # no build asked for it: the agent's


@dataclass
class _Batch:
    batch: EventBatch
    builds: dict[int, Build]
    secrets: BuildSecrets  # a record is masked with the secrets of the builds it names, only
    logins: dict[tuple[int, str], int]  # (configuration id, registry identity) -> connection id
    set_aside: list[tuple[object, str]] = field(default_factory=list)  # (record, why)


def batch_ingest(*, batch_id: int) -> int:
    """Stores an agent's batch: each record once for each of the builds the agent gave it to.

    Only the agent's own builds count: a record naming another agent's build is not stored for it.
    Returns the number of operations stored (or already there); an ingested batch is not read again.
    """
    batch = EventBatch.objects.select_related("agent").filter(pk=batch_id, ingested_at__isnull=True).first()
    if batch is None:
        return 0
    records = batch.data if isinstance(batch.data, list) else []
    named = [_builds_named(record) for record in records]
    context = _batch_context(batch, {build for builds in named for build in builds})
    entries = [entry for entry in map(functools.partial(_entry, context), records, named) if entry is not None]
    with transaction.atomic():
        stored = _entries_store(context, entries)
        if any(entry.unattributed for entry in entries):
            _unattributed_prune(batch.agent_id)
        _set_aside_store(context)
        EventBatch.objects.filter(pk=batch.pk).update(ingested_at=timezone.now(), data=[])
    return stored


def _builds_named(record) -> list:
    builds = record.get("builds") if isinstance(record, dict) else None
    if not isinstance(builds, list):
        return []
    return list(dict.fromkeys(b for b in builds if isinstance(b, int) and not isinstance(b, bool)))


def _batch_context(batch: EventBatch, named: set[int]) -> _Batch:
    builds = Build.objects.select_related("configuration").filter(agent=batch.agent, pk__in=named).in_bulk()
    logins = list(LoginConnection.objects.filter(configuration_id__in={b.configuration_id for b in builds.values()})
                  .select_related("connection").order_by("-position", "-pk"))
    return _Batch(
        batch=batch, builds=builds, secrets=build_secrets(builds.values(), logins),
        # The nearest in the list wins: the configuration's first login to that registry.
        logins={(login.configuration_id, registry_identity(login.connection.registry_address)): login.connection_id
                for login in logins},
    )


def _entry(context: _Batch, record, named: list[int]) -> _Entry | None:
    builds = [build for build in named if build in context.builds]
    if not builds:
        return _unattributed_entry(context, record)
    try:
        fields = operation_fields(record, context.secrets.of(builds))
    except RecordError as exc:
        context.set_aside.append((record, f"not an operation: {exc}"))
        return None
    agent_id = context.batch.agent_id
    # An image name cut, cleaned or with a secret masked names another image (or none): clean-up, on the
    # registry or on the agent, must never act on it.
    altered = {name for name in ("image", "tag", "digest") if fields[name] != record.get(name)}
    entry = _Entry(record=record, rows=[{"build_id": build, "agent_id": agent_id, **fields} for build in builds],
                   trackable=not {"image", "tag"} & altered)
    if fields["action"] == _Action.PUSH:
        problem = _pushed_images(context, entry, altered, named)
        if problem:
            context.set_aside.append((record, f"stored as an operation, not as a pushed image: {problem}"))
    return entry


def _unattributed_entry(context: _Batch, record) -> _Entry | None:
    """A record that names no build and that the agent says no build's own Docker endpoint asked for: kept on
    the agent (UnattributedOperation), without its attributes. Other records naming no build of the agent (an
    older agent's, or naming another agent's builds) are not stored, as before."""
    if not isinstance(record, dict) or record.get("builds") != [] or record.get("unattributed") is not True:
        return None
    try:
        fields = operation_fields(record, NO_SECRETS)  # no build named: no build's secrets to mask
    except RecordError as exc:
        context.set_aside.append((record, f"not an operation: {exc}"))
        return None
    operation = UnattributedOperation(agent_id=context.batch.agent_id, time=_moment(fields["time_nano"]),
                                      **{name: fields[name] for name in UNATTRIBUTED_FIELDS})
    return _Entry(record=record, rows=[], trackable=False, unattributed=[operation])


def _unattributed_prune(agent_id: int) -> None:
    """Keeps the agent's newest UNATTRIBUTED_KEPT operations no build asked for (by the daemon's time)."""
    kept = UnattributedOperation.objects.filter(agent_id=agent_id).order_by("-time_nano", "-pk")
    oldest_kept = next(iter(kept.values("time_nano", "pk")[UNATTRIBUTED_KEPT - 1:UNATTRIBUTED_KEPT]), None)
    if oldest_kept is None:
        return
    older = Q(time_nano__lt=oldest_kept["time_nano"]) | Q(time_nano=oldest_kept["time_nano"], pk__lt=oldest_kept["pk"])
    UnattributedOperation.objects.filter(older, agent_id=agent_id).delete()


def _pushed_images(context: _Batch, entry: _Entry, altered: set[str], named: list[int]) -> str:
    """The entry's pushed images, one per build it was given to; or why there are none.

    A name is never cut nor changed: a cut repository would name another one, which clean-up would delete.
    A repository, tag or digest outside the distribution spec's grammar is not a pushed image (a digest of
    `../../other/app/manifests/…` would make clean-up delete another repository's image). The owner is
    uncertain when the agent named several builds, even if some of them are gone since: the image may be theirs;
    and when it names one build but says `owner_uncertain` (it attributed the push by time, without the build's
    own Docker endpoint, while other builds ran on the daemon).
    """
    if altered:
        return f"its {' and '.join(sorted(altered))} had to be cut or cleaned (too long, or holding a secret)"
    row = entry.rows[0]
    registry, repository = registry_and_repository(row["image"])
    values = {"registry": registry, "repository": repository, "tag": row["tag"], "digest": row["digest"]}
    too_long = [name for name, value in values.items() if len(value) > _PUSHED[name]]
    if too_long:
        return f"its {' and '.join(too_long)} is longer than {max(_PUSHED[n] for n in too_long)} characters"
    malformed = [name for name, check in (("repository", is_repository_name), ("tag", is_tag), ("digest", is_digest))
                 if values[name] and not check(values[name])]
    if malformed or not values["repository"]:
        return f"its {' and '.join(malformed or ['repository'])} is not one a registry would accept"
    builds = [context.builds[r["build_id"]] for r in entry.rows]
    uncertain = len(named) > 1 or entry.record.get("owner_uncertain") is True
    for build in builds:
        entry.images.append(PushedImage(
            build=build, project_id=build.configuration.project_id, configuration_ident=build.configuration.ident,
            build_number=build.number, pushed_at=_moment(row["time_nano"]), **values,
            connection_id=context.logins.get((build.configuration_id, registry)),
            owner_uncertain=uncertain, owner_note=_owner_note(build, builds, len(named)) if uncertain else "",
        ))
    return ""


TIME_ATTRIBUTED_NOTE = "pushed while other builds ran on the same daemon, without their own Docker endpoint"


def _owner_note(build: Build, builds: list[Build], named: int) -> str:
    """Why the owner is uncertain; another project's builds are named by id only (the note is shown to
    this project's members), builds deleted since by their number. One build named (its owner uncertain by the
    agent's word): which others ran is the agent's to know, not said."""
    if named == 1:
        return TIME_ATTRIBUTED_NOTE
    names = [str(b) if b.configuration.project_id == build.configuration.project_id
             else f"build {b.pk} of another project" for b in builds]
    if named > len(builds):
        names.append(f"{named - len(builds)} build(s) deleted since")
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"pushed while builds {listed} ran on the same daemon"[:PushedImage._meta.get_field("owner_note").max_length]


def _entries_store(context: _Batch, entries: list[_Entry]) -> int:
    """Stores the entries in one go; when the database refuses that, one by one, setting aside each it refuses.

    An OperationalError (a lost connection, a deadlock, a timeout) says nothing of the records: it
    fails the whole batch, which the task tries again.
    """
    try:
        with transaction.atomic():
            _store(context.batch.agent_id, entries)
        return sum(len(entry.rows) for entry in entries)
    except OperationalError:
        raise
    except DatabaseError as exc:
        log.warning("Batch %s of agent %s refused as a whole (%s); storing its records one by one",
                    context.batch.first_seq, context.batch.agent_id, exc)
    stored = 0
    for entry in entries:
        try:
            with transaction.atomic():
                _store(context.batch.agent_id, [entry])
            stored += len(entry.rows)
        except OperationalError:
            raise
        except DatabaseError as exc:
            context.set_aside.append((entry.record, f"refused by the database: {exc}"))
    return stored


def _store(agent_id: int, entries: list[_Entry]) -> None:
    rows = [row for entry in entries for row in entry.rows]
    _insert_operations(rows)
    PushedImage.objects.bulk_create([image for entry in entries for image in entry.images], ignore_conflicts=True)
    # A batch delivered twice stores each once (unique by agent and identity).
    UnattributedOperation.objects.bulk_create([operation for entry in entries for operation in entry.unattributed],
                                              ignore_conflicts=True, batch_size=1000)
    _track_agent_images(agent_id, [row for entry in entries if entry.trackable for row in entry.rows])


def _set_aside_store(context: _Batch) -> None:
    """Keeps each record that could not be stored, without secrets, with why; visible in the admin."""
    if not context.set_aside:
        return
    log.warning("%d record(s) of batch %s of agent %s set aside (see Set-aside event records in the admin)",
                len(context.set_aside), context.batch.first_seq, context.batch.agent_id)
    now = timezone.now()
    for record, error in context.set_aside:
        # Shown to superusers only, and perhaps naming no build rightly: masked with every build's secrets.
        secrets = context.secrets.of(context.builds)
        error = secrets.mask(text_clean(error))[:ERROR_LIMIT]
        try:
            with transaction.atomic():
                SetAsideRecord.objects.create(agent_id=context.batch.agent_id, first_seq=context.batch.first_seq,
                                              record=value_clean(record, secrets), error=error, at=now)
        except DatabaseError as exc:
            SetAsideRecord.objects.create(
                agent_id=context.batch.agent_id, first_seq=context.batch.first_seq, record=None, at=now,
                error=(error + "; the record itself could not be kept: "
                       + secrets.mask(text_clean(str(exc))))[:ERROR_LIMIT])


def _moment(time_nano: int) -> datetime:
    return datetime.fromtimestamp(time_nano / 1e9, tz=dt_timezone.utc)


def _postgresql(model):
    connection = connections[router.db_for_write(model)]
    return connection if connection.vendor == "postgresql" else None


def _insert_operations(rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of the rows, as `bulk_create(ignore_conflicts=True)` does."""
    if not rows:
        return
    connection = _postgresql(DockerOperation)
    if connection is None:
        DockerOperation.objects.bulk_create([DockerOperation(**row, time=_moment(row["time_nano"])) for row in rows],
                                            ignore_conflicts=True, batch_size=1000)
        return
    fields = [DockerOperation._meta.get_field(name) for name in ("build", "agent", *OPERATION_FIELDS, "identity")]
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


def _image_reference(row: dict) -> str:
    if row["image"]:
        return f"{row['image']}:{row['tag']}" if row["tag"] else row["image"]
    return row["attributes"].get("image_id", "")


def _image_id(row: dict) -> str:
    image_id = row["attributes"].get("image_id", "")
    return image_id if isinstance(image_id, str) and _IMAGE_ID.fullmatch(image_id) else ""


def _track_agent_images(agent_id: int, rows: list[dict]) -> None:
    """Images builds created or pulled on the agent, and their last use by a build (agent clean-up).

    A reference longer than its column is not tracked: cut, it would name another image.
    """
    latest: dict[str, dict] = {}
    created: dict[str, dict] = {}
    for row in rows:
        reference = _image_reference(row)
        if not reference or not isinstance(reference, str) or len(reference) > _REFERENCE_LIMIT:
            continue
        if reference not in latest or row["time_nano"] > latest[reference]["time_nano"]:
            latest[reference] = row
        if row["action"] in IMAGE_CREATING_ACTIONS and reference not in created:
            created[reference] = row
    if not latest:
        return
    AgentImage.objects.bulk_create([
        AgentImage(agent_id=agent_id, reference=reference, image_id=_image_id(row),
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
