"""Docker event ingestion: `batch_ingest` in batches vs one ORM `.save()` per event.

Creates a throw-away database (PostgreSQL by default: `dockersupport_bench` on the server of
--database-url, dropped at the end; SQLite: a temporary file), migrates it, and stores the same
number of synthetic daemon events (a CI-like mix: pulls, tags, pushes, container
create/start/exec/die/destroy), parsed by `parse_event`, two ways, each into its own build and
agent so that the unique constraint skips nothing:

  batched: `ingestion.batch_ingest` (what the ingest task runs) in batches of `protocol.EVENT_BATCH_SIZE` (500),
           as the event stream delivers them; besides the operations it records a PushedImage
           per push and the agent's images (AgentImage, for agent clean-up);
  naive:   `DockerOperation(...).save()` per event (autocommit), operations only; so the ratio
           understates what batching saves.

Each path runs --rounds times, alternately (fresh events, build and agent each time); the best
run of each counts, so that a busy spell of a shared machine does not decide the ratio. Prints
events/second of each and their ratio, and checks that every run stored every event.
Target: batched >= 10x faster than naive.

    .venv/bin/python benchmarks/event_ingestion.py [--events 20000] [--rounds 3] [--database-url URL]
"""

import argparse
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from _common import (
    DEFAULT_DATABASE_URL,
    T0,
    database_name,
    django_setup,
    ingest_for_build,
    synthetic_events,
    throwaway_database,
)

BENCH_DATABASE = "dockersupport_bench"
TARGET_RATIO = 10


def fixtures(label: str):
    from django.utils import timezone

    from builds.models import Agent, Build, BuildConfiguration
    from connections.models import Project

    project, _ = Project.objects.get_or_create(ident="bench", defaults={"name": "Bench"})
    configuration, _ = BuildConfiguration.objects.get_or_create(project=project, ident="bench",
                                                                defaults={"name": "bench"})
    agent = Agent.objects.create(name=f"bench-{label}")
    started = datetime.fromtimestamp(T0 / 1e9, tz=dt_timezone.utc) - timedelta(minutes=1)
    number = Build.objects.filter(configuration=configuration).count() + 1
    build = Build.objects.create(configuration=configuration, agent=agent, number=number, started_at=started,
                                 heartbeat_at=timezone.now())
    return agent, build


def ingest_batched(records, agent, build, batch_size):
    ingest_for_build(agent, build, records, batch_size)


def ingest_naive(records, agent, build):
    from builds.models import DockerOperation
    from builds.operations.ingestion import OPERATION_FIELDS

    for r in records:
        DockerOperation(build_id=build.pk, agent_id=agent.pk,
                        time=datetime.fromtimestamp(r["time_nano"] / 1e9, tz=dt_timezone.utc),
                        **{k: r[k] for k in OPERATION_FIELDS}).save()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path, alternated; the best counts")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help="server to use: a throw-away database is created on it (PostgreSQL: "
                             f"'{BENCH_DATABASE}', dropped at the end; SQLite: a temporary file)")
    args = parser.parse_args()

    with throwaway_database(args.database_url, BENCH_DATABASE) as database_url:
        django_setup(database_url)
        from django.db import connection

        from agent.events import parse_event
        from agent.protocol import EVENT_BATCH_SIZE as BATCH_SIZE
        from builds.models import DockerOperation, PushedImage

        paths = {"batched": lambda records, agent, build: ingest_batched(records, agent, build, BATCH_SIZE),
                 "naive": ingest_naive}
        runs = {name: [] for name in paths}  # name -> [(seconds, operations stored, pushed images stored)]
        for round_ in range(args.rounds):
            # Alternate which path goes first, so that a slower spell of a shared machine hits both.
            for name in (list(paths) if round_ % 2 == 0 else list(paths)[::-1]):
                start_nano = T0 + (2 * round_ + (name == "naive")) * 10**15  # distinct events per path and round
                records = [parse_event(event) for event in synthetic_events(args.events, start_nano, name)]
                agent, build = fixtures(f"{name}-{round_}")
                start = time.perf_counter()
                paths[name](records, agent, build)
                seconds = time.perf_counter() - start
                runs[name].append((seconds, DockerOperation.objects.filter(build=build).count(),
                                   PushedImage.objects.filter(build=build).count()))
        mix = {}
        for record in records:
            mix[record["action"]] = mix.get(record["action"], 0) + 1
        vendor = database_name(connection)

    print(f"Docker event ingestion, {args.events} events per path and round, best of {args.rounds} round(s), "
          f"on {vendor}")
    print(f"  event mix: {', '.join(f'{k} {v}' for k, v in sorted(mix.items()))}")
    complete = True
    for name, label in (("batched", f"batch_ingest, batches of {BATCH_SIZE}"), ("naive", "one .save() per event")):
        best = min(seconds for seconds, _, _ in runs[name])
        stored = {operations for _, operations, _ in runs[name]}
        pushed = {images for _, _, images in runs[name]}
        complete &= stored == {args.events}
        print(f"  {name:8} ({label}): {best:6.2f} s  {args.events / best:7.0f} events/s"
              f"   (rounds: {', '.join(f'{args.events / seconds:.0f}' for seconds, _, _ in runs[name])} events/s)")
        print(f"           stored {'/'.join(map(str, sorted(stored)))} operations per round"
              f"{' (all)' if stored == {args.events} else ' (MISSING SOME)'}, "
              f"{'/'.join(map(str, sorted(pushed)))} pushed images")
    ratio = min(s for s, _, _ in runs["naive"]) / min(s for s, _, _ in runs["batched"])
    print(f"  ratio batched / naive: {ratio:5.1f} x   (target >= {TARGET_RATIO} x: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    if not complete:
        raise SystemExit("a path did not store every event")


if __name__ == "__main__":
    main()
