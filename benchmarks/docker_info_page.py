"""Docker Info page: SQL queries and time per request of the admin tab, for 10,000 and 100 operations.

Creates a throw-away database (PostgreSQL by default: `dockersupport_bench` on the server of
--database-url, dropped at the end; SQLite: a temporary file), migrates it, and gives two builds
synthetic operations (a CI-like mix of pulls, tags, pushes and containers, stored with
`batch_ingest`). Then it requests `admin:builds_build_docker_info` through Django's test
client, logged in as a superuser: page 1, a middle page, the last page, `?action=die` and
`?q=<image>`, counting SQL queries per request and timing --runs requests (median, with the
part spent rendering the template). It also times `GET /api/v1/builds/{id}/docker-info/`
(every operation, no target) once.

Targets: <= 15 queries per page, the same count for 100 and 10,000 operations; median <= 150 ms.

    .venv/bin/python benchmarks/docker_info_page.py [--operations 10000] [--runs 20] [--database-url URL]
"""

import argparse
import statistics
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
SMALL = 100
MAX_QUERIES = 15
MAX_MEDIAN_MS = 150
SEARCH = "team/ops"  # the images the builds tag and push: about 1 operation in 10


def build_with_operations(count: int, label: str, start_nano: int):
    from django.utils import timezone

    from agent.events import parse_event
    from agent.protocol import EVENT_BATCH_SIZE
    from builds.models import Agent, Build, BuildConfiguration, DockerOperation
    from connections.models import Project

    project, _ = Project.objects.get_or_create(ident="bench", defaults={"name": "Bench"})
    configuration, _ = BuildConfiguration.objects.get_or_create(project=project, ident="bench",
                                                                defaults={"name": "bench"})
    agent = Agent.objects.create(name=f"bench-{label}")
    started = datetime.fromtimestamp(start_nano / 1e9, tz=dt_timezone.utc) - timedelta(minutes=1)
    build = Build.objects.create(
        configuration=configuration, agent=agent, number=Build.objects.filter(configuration=configuration).count() + 1,
        started_at=started, finished_at=started + timedelta(hours=6), status=Build.Status.FAILED, exit_code=1,
        heartbeat_at=timezone.now(), logged_in_registries=["registry.example.test:5000"],
    )
    records = [parse_event(event) for event in synthetic_events(count, start_nano, label)]
    ingest_for_build(agent, build, records, EVENT_BATCH_SIZE)
    assert DockerOperation.objects.filter(build=build).count() == count
    return build


def measure(client, url, runs):
    """(queries, captured queries, median ms, median ms of template rendering) of `runs` GETs of `url`.

    Queries are counted on a first request; rendering includes the queries the template runs
    itself (the page of operations and the pushed images are read as the template iterates).
    """
    from django.db import connection
    from django.template.response import SimpleTemplateResponse
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: HTTP {response.status_code}")
    queries = captured.captured_queries  # now: the next request empties the query log
    times, renders = [], []
    render = SimpleTemplateResponse.render

    def timed_render(self):
        start = time.perf_counter()
        try:
            return render(self)
        finally:
            renders.append((time.perf_counter() - start) * 1000)

    SimpleTemplateResponse.render = timed_render
    try:
        for _ in range(runs):
            start = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        SimpleTemplateResponse.render = render
    return len(queries), queries, statistics.median(times), statistics.median(renders)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help="server to use: a throw-away database is created on it (PostgreSQL: "
                             f"'{BENCH_DATABASE}', dropped at the end; SQLite: a temporary file)")
    parser.add_argument("--show-queries", action="store_true", help="print each page's SQL with its time")
    args = parser.parse_args()

    with throwaway_database(args.database_url, BENCH_DATABASE) as database_url:
        django_setup(database_url)
        from django.contrib.auth import get_user_model
        from django.core.paginator import Paginator
        from django.db import connection
        from django.test import Client
        from django.urls import reverse

        from builds.admin.builds import BuildAdmin
        from builds.operations import selectors

        user = get_user_model().objects.create_superuser("bench", "bench@example.test", "bench-password")
        client = Client()
        client.force_login(user)
        vendor = database_name(connection)
        builds = {count: build_with_operations(count, f"ops{count}", T0 + n * 10**15)
                  for n, count in enumerate((args.operations, SMALL))}

        results = {}  # (count, page name) -> (operations listed, queries, median ms, rendering median ms)
        for count, build in builds.items():
            url = reverse("admin:builds_build_docker_info", args=[build.pk])
            pages = Paginator(range(count), BuildAdmin.docker_info_page_size).num_pages
            for name, query, action, search in (
                ("page 1", "", "", ""), ("middle page", f"?page={max(1, pages // 2)}", "", ""),
                ("last page", f"?page={pages}", "", ""), ("action=die", "?action=die", "die", ""),
                ("q=" + SEARCH, f"?q={SEARCH}", "", SEARCH),
            ):
                queries, captured, median, rendering = measure(client, url + query, args.runs)
                listed = selectors.build_operations(build, action, search).count()
                results[count, name] = (listed, queries, median, rendering)
                if args.show_queries:
                    print(f"--- {count} operations, {name}: {queries} queries")
                    for q in captured:
                        print(f"  {float(q['time']) * 1000:7.1f} ms  {q['sql'][:300]}")

        big = builds[args.operations]
        summary = selectors.docker_info_summary(big)
        tables = (len(summary["containers"]), big.pushed_images.count())
        api_url = f"/api/v1/builds/{big.pk}/docker-info/"
        start = time.perf_counter()
        response = client.get(api_url)
        api_ms = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise SystemExit(f"GET {api_url}: HTTP {response.status_code}")
        api_count, api_bytes = len(response.json()["operations"]), len(response.content)

    print(f"Docker Info admin page on {vendor}: operations listed by the filter, SQL queries per request,")
    print(f"median time of {args.runs} requests and of it the template's rendering:")
    print(f"  {'':17} {f'{args.operations} operations':-^40}   {f'{SMALL} operations':-^28}")
    print(f"  {'page':17} {'listed':>7} {'queries':>8} {'median':>10} {'rendering':>11}"
          f"   {'listed':>7} {'queries':>8} {'median':>10}")
    names = [name for count, name in results if count == args.operations]
    worst_ms, worst_queries, growing = 0.0, 0, []
    for name in names:
        (l_big, q_big, ms_big, r_big), (l_small, q_small, ms_small, _) = results[args.operations, name], \
            results[SMALL, name]
        worst_ms, worst_queries = max(worst_ms, ms_big, ms_small), max(worst_queries, q_big, q_small)
        if q_big != q_small:
            growing.append(name)
        print(f"  {name:17} {l_big:7d} {q_big:8d} {ms_big:7.1f} ms {r_big:8.1f} ms"
              f"   {l_small:7d} {q_small:8d} {ms_small:7.1f} ms")
    print(f"  the {args.operations}-operation build's page also lists its {tables[0]} containers and "
          f"{tables[1]} pushed images, on every page")
    print(f"  queries per page: at most {worst_queries} (target <= {MAX_QUERIES}: "
          f"{'met' if worst_queries <= MAX_QUERIES else 'NOT met'}); "
          + ("the same for both operation counts (target: met)" if not growing
             else f"more with more operations on {', '.join(growing)} (target: NOT met)"))
    print(f"  slowest median: {worst_ms:.1f} ms (target <= {MAX_MEDIAN_MS} ms: "
          f"{'met' if worst_ms <= MAX_MEDIAN_MS else 'NOT met'})")
    print(f"GET {api_url} ({api_count} operations, {api_bytes / 1e6:.1f} MB JSON), once: {api_ms:.0f} ms (no target)")

if __name__ == "__main__":
    main()
