"""Docker Info API: size and time of `GET /api/v1/builds/{id}/docker-info/` for a build of 10,000 operations,
one page of them (now) against all of them in one answer (before issue 15).

Creates a throw-away database (PostgreSQL by default: `dockersupport_bench_api` on the server of
--database-url, dropped at the end; SQLite: a temporary file), migrates it, and gives a build synthetic
operations (benchmarks/docker_info_page.py's CI-like mix, stored with `batch_ingest`). Both answers are
made by the same view stack (DRF's, called with a request as a superuser, rendered to JSON): the
endpoint as it is now (page 1, the last page, ?page_size=1000) and, for comparison, the previous
endpoint's body (the same summary and pushed images with every operation). Median of --runs each.

Target: one page's answer is at most 1/5 of the bytes and of the time of the whole list's. (The rest of a
page's answer is the summary, whole by design: its list of every container the build ran.)

    .venv/bin/python benchmarks/docker_info_api.py [--operations 10000] [--runs 10] [--database-url URL]
"""

import argparse
import statistics
import time

from _common import DEFAULT_DATABASE_URL, T0, database_name, django_setup, throwaway_database

BENCH_DATABASE = "dockersupport_bench_api"
TARGET_RATIO = 5


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help="server to use: a throw-away database is created on it (PostgreSQL: "
                             f"'{BENCH_DATABASE}', dropped at the end; SQLite: a temporary file)")
    args = parser.parse_args()

    with throwaway_database(args.database_url, BENCH_DATABASE) as database_url:
        django_setup(database_url)
        from django.contrib.auth import get_user_model
        from django.db import connection
        from docker_info_page import build_with_operations
        from rest_framework.renderers import JSONRenderer
        from rest_framework.response import Response
        from rest_framework.test import APIRequestFactory, force_authenticate

        from builds import api
        from builds.operations.selectors import build_operations, build_pushed_images, docker_info_summary

        class Before(api.BuildViewSet):
            """docker-info as it answered before issue 15: every operation in one answer."""

            def docker_info(self, request, pk=None):
                build = self.get_object()
                return Response({
                    "summary": docker_info_summary(build),
                    "operations": api.OperationSerializer(build_operations(build).iterator(chunk_size=2000),
                                                          many=True).data,
                    "pushed_images": api.PushedImageSerializer(build_pushed_images(build), many=True).data,
                })

        user = get_user_model().objects.create_superuser("bench", "bench@example.test", "bench-password")
        build = build_with_operations(args.operations, "api", T0)
        vendor = database_name(connection)
        url = f"/api/v1/builds/{build.pk}/docker-info/"
        factory = APIRequestFactory()
        last_page = -(-args.operations // api.OPERATIONS_PAGE_SIZE)

        def measure(viewset, query=""):
            view = viewset.as_view({"get": "docker_info"})
            times, size, listed = [], 0, 0
            for _ in range(args.runs):
                request = factory.get(url + query)
                force_authenticate(request, user=user)
                start = time.perf_counter()
                response = view(request, pk=build.pk)
                response.render()
                times.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"GET {url}{query}: HTTP {response.status_code}")
                size, listed = len(response.content), len(response.data["operations"])
            return listed, size, statistics.median(times)

        summary_bytes = len(JSONRenderer().render(docker_info_summary(build)))
        containers = len(docker_info_summary(build)["containers"])
        rows = [
            ("before: every operation", *measure(Before)),
            ("now: page 1 (default size)", *measure(api.BuildViewSet)),
            (f"now: ?page={last_page}", *measure(api.BuildViewSet, f"?page={last_page}")),
            (f"now: ?page_size={api.OPERATIONS_PAGE_SIZE_MAX}", *measure(api.BuildViewSet,
                                                                         f"?page_size={api.OPERATIONS_PAGE_SIZE_MAX}")),
        ]

    print(f"GET /api/v1/builds/{{id}}/docker-info/ for a build of {args.operations} operations on {vendor}: "
          f"operations listed, JSON size, median time of {args.runs} requests")
    print(f"  {'answer':32} {'listed':>7} {'bytes':>11} {'median':>10}")
    for name, listed, size, median in rows:
        print(f"  {name:32} {listed:7d} {size:11,d} {median:7.1f} ms")
    _, _, before_bytes, before_ms = rows[0]
    _, _, page_bytes, page_ms = rows[1]
    size_ratio, time_ratio = before_bytes / page_bytes, before_ms / page_ms
    met = size_ratio >= TARGET_RATIO and time_ratio >= TARGET_RATIO
    print(f"  of each answer, the summary (whole on every page: {containers} containers) is {summary_bytes:,d} bytes")
    print(f"  one page against all: {size_ratio:.0f}x fewer bytes, {time_ratio:.1f}x less time "
          f"(target >= {TARGET_RATIO}x each: {'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
