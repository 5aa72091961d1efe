"""What the database benchmarks share: a throw-away database, Django set-up and synthetic daemon events."""

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
T0 = 1_790_000_000_000_000_000  # 2026-09-21, nanoseconds


@contextmanager
def throwaway_database(server_url: str, name: str):
    """Yields a DATABASE_URL for a new, empty database on the server of `server_url`; drops it after."""
    parts = urlsplit(server_url)
    if parts.scheme.startswith("sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/{name}.sqlite3"
        return
    import psycopg

    def admin_connect():
        return psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                               user=parts.username or "postgres", password=parts.password,
                               dbname=(parts.path.lstrip("/") or "postgres"), autocommit=True)

    with admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    finally:
        from django.db import connections

        connections.close_all()
        with admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(connection) -> str:
    if connection.vendor == "postgresql":
        return f"PostgreSQL {connection.pg_version // 10000}.{connection.pg_version % 10000}"
    return f"{connection.display_name} {connection.Database.sqlite_version}" if connection.vendor == "sqlite" \
        else connection.display_name


def django_setup(database_url: str):
    """Django on `database_url`, migrated; test_settings: fixed keys, no SSL redirect."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["DEBUG"] = "0"  # production behaviour: no query log kept in memory (.env may say DEBUG=1)
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["DJANGO_SETTINGS_MODULE"] = "dockersupport_site.test_settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def synthetic_events(count: int, start_nano: int, label: str) -> list[dict]:
    """`count` raw daemon events, 1 ms apart, of a CI build: each step pulls a base image, runs two
    containers (create, start, exec, die, destroy; now and then one fails) and tags what it built;
    every 4th step also tags a release and pushes it (about 12 events a step, 2% of them pushes)."""
    registry = "registry.example.test:5000"
    events = []
    step = 0

    def add(kind, action, actor, **attributes):
        events.append({"Type": kind, "Action": action, "timeNano": start_nano + len(events) * 1_000_000,
                       "Actor": {"ID": actor, "Attributes": attributes}})

    while len(events) < count:
        base = f"{registry}/team/base:{step % 40}"
        app = f"{registry}/team/{label}"
        image_id = f"sha256:{step:064x}"
        add("image", "pull", base, name=f"{registry}/team/base")
        for n, command in enumerate(("make test", "make package")):
            container = f"{label}{step:08d}{n:02d}".ljust(64, "c")
            attrs = {"name": f"{label}-step-{step}-{n}", "image": base}
            add("container", "create", container, **attrs)
            add("container", "start", container, **attrs)
            add("container", f"exec_start: sh -c '{command}'", container, execID=f"{step:060x}{n:04x}", **attrs)
            add("container", "die", container, exitCode="1" if step % 17 == n else "0", **attrs)
            add("container", "destroy", container, **attrs)
        add("image", "tag", image_id, name=f"{app}:build-{step}")
        if step % 4 == 3:
            add("image", "tag", image_id, name=f"{app}:{step}")
            add("image", "push", f"{app}:{step}", name=app)
        step += 1
    return events[:count]


def ingest_for_build(agent, build, records: list[dict], batch_size: int) -> None:
    """The server's side of what an agent sends: the records in batches, each given to `build`
    (builds.operations.ingestion.batch_ingest, as the ingest task runs it)."""
    from django.utils import timezone

    from builds.models import EventBatch
    from builds.operations import ingestion

    first = EventBatch.objects.filter(agent=agent).count() * 1_000_000 + 1
    for i in range(0, len(records), batch_size):
        chunk = [{**record, "builds": [build.pk]} for record in records[i:i + batch_size]]
        batch = EventBatch.objects.create(agent=agent, first_seq=first + i, last_seq=first + i + len(chunk) - 1,
                                          records=len(chunk), data=chunk, received_at=timezone.now())
        ingestion.batch_ingest(batch_id=batch.pk)
