"""Agent clean-up (Free Disk Space): planning over 10,000 tracked images, and removing 100 images.

Starts its own Docker daemon (tests/harness, vfs storage), then measures the agent's side of it
(agent/cleanup.py) in one run:

  plan:    `plan_candidates(client, tracked)` for --tracked (10,000) tracked images (the list the
           server hands the agent), as on a long-lived build host: most of them are gone from the daemon;
           the rest match real images there (--tags tags of one image, --distinct small images of
           their own, a few of them used by stopped containers), next to images no build made.
           Median of --runs runs, with a breakdown (daemon image list, containers).
           Target: <= 1 s.
  removal: `images_remove_until_free(client, tracked, required=free + 1 TiB, ...)` removing --remove (100) tracked, distinct
           small images (each with a layer of its own, so each removal deletes a vfs directory),
           re-reading free space after each, vs a `docker image rm <ref>` loop (one docker CLI
           process per image) over as many other images of the same kind on the same daemon.
           Prints both wall times, images/second and the ratio (docker loop / ours); no target.

    .venv/bin/python benchmarks/agent_cleanup.py [--tracked 10000] [--tags 500] [--distinct 50] [--runs 5] [--profile]
"""

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import DockerDaemon, import_busybox_image  # noqa: E402

PLAN_TARGET_S = 1.0
TiB = 1024 ** 4


def tiny_tarball(label: str) -> bytes:
    """A root filesystem with one small file of unique content: importing it makes a layer of its own."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = (label.encode() + b"\n") + os.urandom(4096)
        info = tarfile.TarInfo(f"bench/{label.replace('/', '_').replace(':', '_')}")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_distinct(client, references):
    for reference in references:
        repository, tag = reference.rsplit(":", 1)
        client.api.import_image_from_data(tiny_tarball(reference), repository=repository, tag=tag)


def timed(function, runs):
    times, value = [], None
    for _ in range(runs):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def track(references, now, rng):
    """Tracked images for `references`, last used over the past 90 days (in random order)."""
    from agent.protocol import TrackedImage

    return [TrackedImage(reference=reference, last_used_at=now - timedelta(seconds=rng.randrange(90 * 86400)))
            for reference in references]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracked", type=int, default=10_000, help="tracked images the server hands the agent")
    parser.add_argument("--tags", type=int, default=500, help="tracked tags of one image (busybox) on the daemon")
    parser.add_argument("--distinct", type=int, default=50, help="tracked distinct small images on the daemon")
    parser.add_argument("--containers", type=int, default=5, help="stopped containers using tracked images")
    parser.add_argument("--remove", type=int, default=100, help="images removed by each removal path")
    parser.add_argument("--runs", type=int, default=5, help="runs of plan_candidates (median)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one plan_candidates run")
    args = parser.parse_args()
    rng = random.Random(42)

    with DockerDaemon() as daemon:
        from agent.cleanup import free_bytes, images_remove_until_free, plan_candidates

        client = daemon.client(timeout=120)
        docker_env = {**os.environ, "DOCKER_HOST": daemon.host}
        docker_env.pop("DOCKER_CONTEXT", None)

        # The daemon: busybox (made by no build) with --tags tags that builds made, --distinct small
        # images of their own, and 2 x --remove small images for the removal measurement.
        start = time.perf_counter()
        busybox = import_busybox_image(client)
        tag_refs = [f"made/img{n}:1" for n in range(args.tags)]
        for reference in tag_refs:
            busybox.tag(reference.rsplit(":", 1)[0], "1")
        distinct_refs = [f"made/dist{n}:1" for n in range(args.distinct)]
        ours_refs = [f"bench/ours{n}:1" for n in range(args.remove)]
        cli_refs = [f"bench/cli{n}:1" for n in range(args.remove)]
        import_distinct(client, distinct_refs + ours_refs + cli_refs)
        for reference in distinct_refs[:args.containers]:
            client.containers.create(reference, "true", network_mode="none")  # stopped: keeps the image
        setup_daemon = time.perf_counter() - start
        summaries = client.api.images()

        # What the server hands the agent: --tracked references, most of them gone.
        now = datetime.now(timezone.utc)
        real = tag_refs + distinct_refs
        gone = [f"registry.example.test/team/app{n % 97}:build-{n}" for n in range(max(args.tracked - len(real), 0))]
        planned = track(real + gone, now, rng)
        tracked = len(planned)

        print(f"set-up: {len(summaries)} images on the daemon ({sum(len(s.get('RepoTags') or []) for s in summaries)} "
              f"tags; made in {setup_daemon:.1f} s), {args.containers} stopped containers, "
              f"{tracked} tracked references ({len(real)} on the daemon, {len(gone)} gone)")

        # 1. The plan.
        plan_time, plan = timed(lambda: plan_candidates(client, planned), args.runs)
        in_images_api, _ = timed(lambda: client.api.images(), args.runs)
        in_containers_api, _ = timed(lambda: client.api.containers(all=True), args.runs)
        in_images_list, _ = timed(lambda: client.images.list(), args.runs)
        in_containers, _ = timed(lambda: client.containers.list(all=True, ignore_removed=True), args.runs)
        print(f"\n1. plan_candidates for {tracked} tracked images (median of {args.runs} runs):")
        print(f"  plan_candidates:                 {plan_time * 1000:8.1f} ms   ({len(plan)} candidates)   "
              f"(target <= {PLAN_TARGET_S:.0f} s: {'target met' if plan_time <= PLAN_TARGET_S else 'target NOT met'})")
        print("  its parts, measured alone:")
        print(f"    GET /images/json:              {in_images_api * 1000:8.1f} ms")
        print(f"    GET /containers/json?all=1:    {in_containers_api * 1000:8.1f} ms")
        print("  for comparison, docker-py's model lists (one inspect request per image / container):")
        print(f"    client.images.list():          {in_images_list * 1000:8.1f} ms")
        print(f"    client.containers.list(all):   {in_containers * 1000:8.1f} ms")
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(plan_candidates, client, planned)
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)

        # 2. Removal of --remove images: ours vs a docker CLI loop.
        ours_tracked = track(ours_refs, now, rng)
        remover_plan, candidates = timed(lambda: plan_candidates(client, ours_tracked), 1)
        free = free_bytes(daemon.data_root, "benchmark")
        start = time.perf_counter()
        result = images_remove_until_free(client, ours_tracked, free + TiB, daemon.data_root, "benchmark")
        ours = time.perf_counter() - start
        failures = 0
        start = time.perf_counter()
        for reference in cli_refs:
            done = subprocess.run(["docker", "image", "rm", reference], env=docker_env, capture_output=True, text=True)
            failures += done.returncode != 0
        cli = time.perf_counter() - start
        left = {tag for summary in client.api.images() for tag in summary.get("RepoTags") or []}
        client.close()

    print(f"\n2. removal of {args.remove} distinct tracked images (vfs), same daemon:")
    print(f"  images_remove_until_free:        {ours:8.2f} s   {len(result.removed) / ours:7.1f} images/s   "
          f"({len(result.removed)} removed, {len(result.errors)} errors, "
          f"{sum(ref in left for ref in ours_refs)} of ours left; its plan of {len(candidates)} candidates "
          f"alone: {remover_plan * 1000:.0f} ms)")
    print(f"  docker image rm loop (CLI):      {cli:8.2f} s   {(args.remove - failures) / cli:7.1f} images/s   "
          f"({args.remove - failures} removed, {failures} failed, {sum(ref in left for ref in cli_refs)} left)")
    print(f"  ratio docker loop / ours:        {cli / ours:8.2f} x")
    print(f"\n(plan target <= {PLAN_TARGET_S:.0f} s: {'met' if plan_time <= PLAN_TARGET_S else 'NOT met'})")


if __name__ == "__main__":
    main()
