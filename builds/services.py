"""Writes about build configurations and builds: start, registry login, logout, finish.

Login and logout touch the agent's Docker daemon and file system, so they run on the build
host: in `run_build` itself, or in a Celery worker of the agent's queue for API-driven builds.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Max, Q
from django.utils import timezone

from connections.models import Connection
from connections.registries import RegistryCredentials, RegistryError, credentials_for
from connections.registries.credentials import docker_server
from connections.registries.credentials import REFRESH_LEAD

from .docker.client_config import config_dir_create, config_dir_remove, config_servers, config_write
from .docker.daemon import DaemonError, daemon_client, daemon_verify_login
from .docker.references import registry_and_repository
from .models import Agent, AgentImage, Build, BuildConfiguration, DockerOperation, LoginConnection, PushedImage


class BuildStartError(Exception):
    """The build could not be started; nothing was created."""


class BuildLoginError(Exception):
    """A required login failed: the build is marked as an error and its command must not run."""


@dataclass
class LoginResult:
    docker_config: str
    logged_in: list[str] = field(default_factory=list)  # "project/connection → host"
    warnings: list[str] = field(default_factory=list)


def login_hosts_validate(connections: Iterable[Connection]) -> None:
    """A Docker config holds one credential per registry host: two logins to one host are an error."""
    seen: dict[str, Connection] = {}
    for connection in connections:
        host = connection.registry_address
        if host in seen:
            raise ValidationError(
                f"connections '{seen[host].ident}' and '{connection.ident}' both log in to {host}; "
                "a Docker config holds one credential per registry host",
                code="duplicate_registry_host",
            )
        seen[host] = connection


@transaction.atomic
def builds_set_pinned(builds: Iterable[Build], pinned: bool) -> int:
    """Pinned builds are never deleted by retention."""
    return Build.objects.filter(pk__in=[b.pk for b in builds]).update(pinned=pinned)


def build_start(*, configuration: BuildConfiguration, agent: Agent, number: int | None = None,
                started_by: str = Build.StartedBy.RUN_BUILD) -> Build:
    """Creates a running build, numbered after the configuration's last one unless `number` is given."""
    now = timezone.now()
    try:
        with transaction.atomic():
            # Locking the configuration serialises numbering between concurrent starts.
            BuildConfiguration.objects.select_for_update().filter(pk=configuration.pk).first()
            if number is None:
                number = (configuration.builds.aggregate(last=Max("number"))["last"] or 0) + 1
            return Build.objects.create(
                configuration=configuration, agent=agent, number=number, started_at=now, heartbeat_at=now,
                started_by=started_by,
            )
    except IntegrityError:
        raise BuildStartError(
            f"build {number} of configuration '{configuration.ident}' already exists; "
            "give another --number or leave it out to take the next one"
        ) from None


def _session_name(build: Build) -> str:
    return f"dockersupport-{build.configuration.ident}-{build.number}"


def _build_logins(build: Build) -> list[LoginConnection]:
    return list(build.configuration.logins.select_related("connection__project"))


def build_login(*, build: Build) -> LoginResult:
    """Logs the build in to its configuration's registries, into a DOCKER_CONFIG of its own.

    Every credential is first verified by the agent's daemon with the registry. A failed
    optional login becomes a warning of the build; a failed required one erases what was
    written, marks the build as an error and raises BuildLoginError.
    """
    root = settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT
    logins = _build_logins(build)
    try:
        login_hosts_validate(login.connection for login in logins)
    except ValidationError as exc:
        _fail(build, f"configuration '{build.configuration.ident}': {exc.messages[0]}")
    path = config_dir_create(root, f"{build.configuration.ident}-{build.number}")
    Build.objects.filter(pk=build.pk).update(docker_config=str(path))
    build.docker_config = str(path)
    result = LoginResult(docker_config=str(path))
    credentials: list[RegistryCredentials] = []
    client = daemon_client(build.agent.effective_docker_host)
    try:
        for login in logins:
            connection = login.connection
            try:
                obtained = credentials_for(connection, session_name=_session_name(build))
                daemon_verify_login(client, obtained)
            except (RegistryError, DaemonError) as exc:
                message = f"login with connection '{connection}' to {connection.registry_address} failed: {exc}"
                if login.optional:
                    result.warnings.append(message)
                    continue
                config_dir_remove(path, root)
                _fail(build, message)
            credentials.append(obtained)
            result.logged_in.append(f"{connection} → {connection.registry_address}")
    finally:
        client.close()
    config_write(path, credentials)
    expiries = [c.expires_at for c in credentials if c.expires_at is not None]
    build.login_expires_at = min(expiries) if expiries else None
    build.warnings = [*build.warnings, *result.warnings]
    build.logged_in_registries = [login.connection.registry_address for login in logins
                                  if docker_server(login.connection) in {c.server for c in credentials}]
    build.save(update_fields=["login_expires_at", "warnings", "logged_in_registries"])
    return result


def _fail(build: Build, message: str):
    Build.objects.filter(pk=build.pk).update(
        status=Build.Status.ERROR, error=message, docker_config="", finished_at=timezone.now(),
        logged_out_at=timezone.now(),
    )
    build.refresh_from_db()
    raise BuildLoginError(message)


def build_refresh_logins(*, build: Build) -> bool:
    """Writes fresh tokens into a running build's config before its expiring ones (ECR) run out.

    Returns True when the config was rewritten. Logins that failed at the start stay out.
    """
    if not build.is_running or not build.docker_config or build.login_expires_at is None:
        return False
    if build.login_expires_at > timezone.now() + REFRESH_LEAD:
        return False
    path = Path(build.docker_config)
    logged_in = config_servers(path)
    credentials = []
    for login in _build_logins(build):
        if docker_server(login.connection) not in logged_in:
            continue
        try:
            credentials.append(credentials_for(
                login.connection, session_name=_session_name(build), valid_for=REFRESH_LEAD + REFRESH_LEAD,
            ))
        except RegistryError as exc:
            build.warnings = [*build.warnings, f"refreshing connection '{login.connection}' failed: {exc}"]
    config_write(path, credentials)
    expiries = [c.expires_at for c in credentials if c.expires_at is not None]
    build.login_expires_at = min(expiries) if expiries else None
    build.save(update_fields=["login_expires_at", "warnings"])
    return True


def build_logout(*, build: Build) -> bool:
    """Erases the build's credentials; harmless when already done. True if something was removed."""
    removed = False
    if build.docker_config:
        removed = config_dir_remove(build.docker_config, settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT)
    now = timezone.now()
    Build.objects.filter(pk=build.pk).update(docker_config="", logged_out_at=now)
    build.docker_config, build.logged_out_at = "", now
    return removed


def build_heartbeat(*, build: Build) -> None:
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(heartbeat_at=timezone.now())


def build_finish(*, build: Build, exit_code: int) -> Build:
    """Logs the build out and records how it ended."""
    build_logout(build=build)
    status = Build.Status.SUCCEEDED if exit_code == 0 else Build.Status.FAILED
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
        status=status, exit_code=exit_code, finished_at=timezone.now(),
    )
    build.refresh_from_db()
    return build


def build_abandon(*, build: Build, reason: str) -> None:
    """Closes a build whose process died; its logout is done by the agent (see tasks)."""
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
        status=Build.Status.ERROR, error=reason, finished_at=timezone.now(),
    )


def operations_ingest(*, agent_id: int, records: list[dict], build_id: int | None = None) -> int:
    """Stores a batch of Docker operation records with bulk inserts; returns how many were attributed.

    Records come from `builds.docker.events.parse_event`. With `build_id` they belong to that
    build (run_build); without it each is given to the agent's build that was running at the
    event's time (the agent's watcher), and records outside any build are dropped. A batch
    delivered twice changes nothing: operations are unique per agent, time, type, action, actor.
    """
    if not records:
        return 0
    if build_id is not None:
        owners = {r["time_nano"]: build_id for r in records}
    else:
        owners = _owners_by_time(agent_id, [r["time_nano"] for r in records])
    rows = [
        DockerOperation(
            build_id=owners[r["time_nano"]], agent_id=agent_id,
            time=datetime.fromtimestamp(r["time_nano"] / 1e9, tz=dt_timezone.utc),
            **{k: r[k] for k in OPERATION_FIELDS},
        )
        for r in records if owners.get(r["time_nano"]) is not None
    ]
    with transaction.atomic():
        _operations_insert(rows)
        _record_pushed_images([row for row in rows if row.action == DockerOperation.Action.PUSH])
        _track_agent_images(agent_id, rows)
    return len(rows)


def _operations_insert(rows: list[DockerOperation]) -> None:
    """`bulk_create(rows, ignore_conflicts=True)`, in one statement on PostgreSQL.

    There the rows go as one JSON document that `jsonb_to_recordset` expands: the same
    INSERT ... ON CONFLICT DO NOTHING of the same values, without Django preparing each of the
    15 values of every row through its model field and psycopg quoting them one by one, which
    took most of the ingestion's time (benchmarks/event_ingestion.py).
    """
    connection = connections[router.db_for_write(DockerOperation)]
    if connection.vendor != "postgresql" or not rows:
        DockerOperation.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        return
    fields = [DockerOperation._meta.get_field(name) for name in ("build", "agent", "time", *OPERATION_FIELDS)]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    # Types without length, as bulk_create's UNNEST: too long a value fails the INSERT, never truncated.
    types = ", ".join(f"{quote(f.column)} {f.db_type(connection).split('(')[0]}" for f in fields)
    payload = json.dumps([
        {"build_id": row.build_id, "agent_id": row.agent_id, "time": row.time.isoformat(),
         **{name: getattr(row, name) for name in OPERATION_FIELDS}}
        for row in rows
    ])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(DockerOperation._meta.db_table)} ({columns}) SELECT {columns}"
            f" FROM jsonb_to_recordset(%s::jsonb) AS r({types}) ON CONFLICT DO NOTHING",
            [payload],
        )


IMAGE_CREATING_ACTIONS = {"pull", "build", "import", "load", "tag"}


def _image_reference(operation: DockerOperation) -> str:
    if operation.image:
        return f"{operation.image}:{operation.tag}" if operation.tag else operation.image
    return operation.attributes.get("image_id", "")


def _track_agent_images(agent_id: int, rows: list[DockerOperation]) -> None:
    """Images builds created or pulled on the agent, and their last use by a build (agent clean-up)."""
    latest: dict[str, DockerOperation] = {}
    created: dict[str, DockerOperation] = {}
    for row in rows:
        reference = _image_reference(row)
        if not reference:
            continue
        if reference not in latest or row.time_nano > latest[reference].time_nano:
            latest[reference] = row
        if row.action in IMAGE_CREATING_ACTIONS and reference not in created:
            created[reference] = row
    if not latest:
        return
    AgentImage.objects.bulk_create([
        AgentImage(agent_id=agent_id, reference=reference, image_id=row.attributes.get("image_id", ""),
                   created_by=row.action, first_seen_at=row.time, last_used_at=row.time, last_build_id=row.build_id)
        for reference, row in created.items()
    ], ignore_conflicts=True)
    connection = connections[router.db_for_write(AgentImage)]
    if connection.vendor == "postgresql":
        # The same updates as the loop below in one statement: one UPDATE per image (~90 in a batch
        # of 500 events) took half of the ingestion's time (benchmarks/event_ingestion.py).
        column = {name: connection.ops.quote_name(AgentImage._meta.get_field(name).column)
                  for name in ("agent", "reference", "last_used_at", "last_build")}
        uses = json.dumps([
            {"reference": reference, "last_used_at": row.time.isoformat(), "last_build_id": row.build_id}
            for reference, row in latest.items()
        ])
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {connection.ops.quote_name(AgentImage._meta.db_table)} AS a"
                f" SET {column['last_used_at']} = u.last_used_at, {column['last_build']} = u.last_build_id"
                " FROM jsonb_to_recordset(%s::jsonb)"
                " AS u(reference text, last_used_at timestamptz, last_build_id bigint)"
                f" WHERE a.{column['agent']} = %s AND a.{column['reference']} = u.reference"
                f" AND a.{column['last_used_at']} < u.last_used_at",  # never back in time (a replayed older batch)
                [uses, agent_id],
            )
        return
    for reference, row in latest.items():
        # A replayed older batch must not move a last use back in time.
        AgentImage.objects.filter(agent_id=agent_id, reference=reference, last_used_at__lt=row.time).update(
            last_used_at=row.time, last_build_id=row.build_id)


OPERATION_FIELDS = ("time_nano", "event_type", "action", "raw_action", "actor_id", "image", "tag", "digest",
                    "container_id", "container_name", "exit_code", "attributes")


def _owners_by_time(agent_id: int, times: list[int]) -> dict[int, int]:
    """Event time → the id of the agent's build that was running then (the latest started)."""
    low = datetime.fromtimestamp(min(times) / 1e9, tz=dt_timezone.utc)
    high = datetime.fromtimestamp(max(times) / 1e9, tz=dt_timezone.utc)
    builds = list(
        Build.objects.filter(agent_id=agent_id, started_at__lte=high)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=low))
        .order_by("-started_at").values_list("pk", "started_at", "finished_at")
    )
    owners = {}
    for nano in times:
        moment = datetime.fromtimestamp(nano / 1e9, tz=dt_timezone.utc)
        for pk, started, finished in builds:
            if started <= moment and (finished is None or moment <= finished):
                owners[nano] = pk
                break
    return owners


def _record_pushed_images(pushes: list[DockerOperation]) -> None:
    if not pushes:
        return
    builds = Build.objects.select_related("configuration").in_bulk({p.build_id for p in pushes})
    images = []
    for push in pushes:
        build = builds[push.build_id]
        registry, repository = registry_and_repository(push.image)
        images.append(PushedImage(
            build=build, project_id=build.configuration.project_id, configuration_ident=build.configuration.ident,
            build_number=build.number, registry=registry, repository=repository, tag=push.tag,
            digest=push.digest, pushed_at=push.time,
        ))
    PushedImage.objects.bulk_create(images, ignore_conflicts=True)
