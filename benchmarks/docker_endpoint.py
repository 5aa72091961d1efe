"""Issue 16's per-build Docker endpoint as the product runs it: what it costs a build, and the agent.

Starts its own Docker daemon (tests/harness, vfs storage) and a build's endpoint the way the agent
does (agent.endpoints.start: `python -m agent.docker_proxy` in a process of its own, writing its
journal of facts), and measures, direct (the daemon's socket) vs through the endpoint:

  latency:     median and p90 of --calls `GET /version` round trips on a new connection each (as the
               docker CLI opens one per command), and of --cli `docker version` runs (Debian's
               /usr/bin/docker, its start-up included), direct and through taking turns.
               Target: a few ms added.
  throughput:  `docker build` of a --size MiB context (1 GiB by default), median wall time of --builds
               each way: classic (DOCKER_BUILDKIT=0: the context is the request's body) and BuildKit
               (DOCKER_BUILDKIT=1: the context crosses the upgraded /session stream; the build cache is
               emptied before each build so that all of it crosses each time). Target: >= 90 % of direct.
  resources:   the endpoint process's CPU (user+system) per GiB of build context; its RSS idle and at
               its peak during the builds (sampled every 50 ms).
  attribution: the agent's side: agent.attribution.Attributor.decide on --events parse_event records
               of two builds running at once, whose journals hold --requests requests each (CI steps:
               pulls, containers run and exec'd, tags, pushes; a ping before each request, as the CLI
               does), µs per event. Target: printed (the event stream's writer thread pays it).

    .venv/bin/python benchmarks/docker_endpoint.py [--quick] [--calls 300] [--cli 20] [--size 1024] [--builds 3]
"""

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from _common import T0, synthetic_events
from docker_proxy_spike import MiB, cli_version, cpu_seconds, version_round_trip

from agent import endpoints
from agent.attribution import Attributor
from agent.docker_proxy import Journal
from agent.events import BuildWindows, parse_event
from tests.harness import DockerDaemon, import_busybox_image, short_tempdir

DEBIAN_DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI builds with BuildKit without the buildx plugin
QUICK = {"calls": 50, "cli": 5, "size": 64, "builds": 1}
SAMPLE_EVERY = 0.05


# -- direct vs through the endpoint ----------------------------------------------------------------------

def latencies(measure, direct, through, count):
    """{"direct": [...], "through": [...]} seconds of `count` measures each, taking turns (a busy spell
    of a shared machine then weighs on both alike)."""
    times = {"direct": [], "through": []}
    for _ in range(count):
        times["direct"].append(measure(direct))
        times["through"].append(measure(through))
    return times


def p90(values):
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def print_latency(label, times, count, digits):
    """One line: median and p90 both ways, and what the endpoint adds, in ms."""
    figures = {name: (statistics.median(values) * 1000, p90(values) * 1000) for name, values in times.items()}
    (median_d, p90_d), (median_t, p90_t) = figures["direct"], figures["through"]
    print(f"{label}, {count} each way: median direct {median_d:.{digits}f} ms, endpoint {median_t:.{digits}f} ms "
          f"({median_t - median_d:+.{digits}f} ms); p90 direct {p90_d:.{digits}f} ms, endpoint {p90_t:.{digits}f} ms "
          f"({p90_t - p90_d:+.{digits}f} ms); target: a few ms added")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The highest RSS of a process while the block runs, sampled every SAMPLE_EVERY seconds."""

    def __init__(self, pid):
        self.pid, self.peak = pid, rss_kib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.wait(SAMPLE_EVERY):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))


def make_context(folder, image, size):
    """A context of `size` MiB of random bytes, and a Dockerfile for each builder that needs all of it:
    the classic builder is sent the whole context anyway; BuildKit only what a step reads (here a RUN
    with the blob bind-mounted, so no 1 GiB layer is written)."""
    folder.mkdir()
    (folder / "Dockerfile.classic").write_text(f'FROM {image}\nCMD ["true"]\n')
    (folder / "Dockerfile.buildkit").write_text(
        f'FROM {image}\nRUN --mount=type=bind,source=blob,target=/blob ["test", "-s", "/blob"]\n')
    with open(folder / "blob", "wb") as f:
        for _ in range(size):
            f.write(os.urandom(MiB))
    return folder


def build(host, context, builder):
    """Wall seconds of one `docker build` through `host` with `builder` ("classic" or "buildkit")."""
    environment = {**os.environ, "DOCKER_HOST": f"unix://{host}", "DOCKER_BUILDKIT": str(int(builder == "buildkit"))}
    start = time.perf_counter()
    result = subprocess.run([DEBIAN_DOCKER, "build", "-q", "--network", "none", "-t", f"endpoint-bench/{builder}:1",
                             "-f", str(context / f"Dockerfile.{builder}"), str(context)],
                            env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - start


def compare_builds(builder, context, direct, through, endpoint_pid, client, args):
    """Builds --builds times each way (taking turns); prints wall times, the ratio, the endpoint's CPU
    per GiB of context and its peak RSS."""
    def fresh():
        if builder == "buildkit":  # else BuildKit sends only what changed since its last build: nothing
            client.api.prune_builds(all=True)

    fresh()
    build(direct, context, builder)  # warm: the page cache of the context, the daemon's builder
    times, cpu = {"direct": [], "through": []}, 0.0
    with PeakRss(endpoint_pid) as memory:
        for _ in range(args.builds):
            fresh()
            times["direct"].append(build(direct, context, builder))
            fresh()
            cpu0 = cpu_seconds(endpoint_pid)
            times["through"].append(build(through, context, builder))
            cpu += cpu_seconds(endpoint_pid) - cpu0
    direct_s, through_s = statistics.median(times["direct"]), statistics.median(times["through"])
    best_direct, best_through = min(times["direct"]), min(times["through"])
    print(f"docker build ({builder}), {args.size} MiB context, median of {args.builds}: direct {direct_s:.2f} s, "
          f"endpoint {through_s:.2f} s: {direct_s / through_s * 100:.0f} % of direct throughput (target >= 90 %); "
          f"best: {best_direct:.2f} vs {best_through:.2f} s, {best_direct / best_through * 100:.0f} %; "
          f"endpoint CPU {cpu / args.builds / (args.size / 1024):.2f} s per GiB, peak RSS {memory.peak / 1024:.1f} MiB")


# -- the agent's side: attribution from the journals -------------------------------------------------------

def _image_reference(reference):
    """("name", "tag") of "registry:5000/team/app:tag"."""
    name, _, tag = reference.rpartition(":")
    return name, tag


def requests_for(raw):
    """The requests that made a daemon event, as a build's docker CLI sends them: (method, path, query,
    what the proxy reads from the answer), each after a `HEAD /_ping`."""
    kind, action = raw["Type"], raw["Action"].split(":", 1)[0]
    actor, attributes = raw["Actor"]["ID"], raw["Actor"]["Attributes"]
    ping = ("HEAD", "/_ping", {}, {})
    if kind == "image" and action == "pull":
        name, tag = _image_reference(actor)
        return [ping, ("POST", "/images/create", {"fromImage": [name], "tag": [tag]}, {})]
    if kind == "image" and action == "tag":
        name, tag = _image_reference(attributes["name"])
        return [ping, ("POST", f"/images/{actor}/tag", {"repo": [name], "tag": [tag]}, {})]
    if kind == "image" and action == "push":
        name, tag = _image_reference(actor)
        pushed = {"tag": tag, "digest": "sha256:" + hashlib.sha256(actor.encode()).hexdigest(), "size": 1234}
        return [ping, ("POST", f"/images/{name}/push", {"tag": [tag]}, {"pushed": pushed})]
    if action == "create":
        return [ping, ("POST", "/containers/create", {"name": [attributes["name"]]}, {"container": actor})]
    if action == "exec_start":
        exec_id = attributes["execID"]
        return [ping, ("POST", f"/containers/{actor}/exec", {}, {"exec": exec_id}),
                ("POST", f"/exec/{exec_id}/start", {}, {})]
    if action == "start":
        return [ping, ("POST", f"/containers/{actor}/start", {}, {})]
    if action == "die":
        return [ping, ("POST", f"/containers/{actor}/wait", {"condition": ["next-exit"]}, {})]
    return [ping, ("DELETE", f"/containers/{actor}", {"force": ["1"]}, {})]


def write_journal(path, label, start_nano, requests):
    """A build's journal as its endpoint writes it (agent.docker_proxy.Journal): each event's requests,
    the first begun 0.5 ms before the event, the last ended 0.2 ms after it; stops at `requests`
    requests. Returns the events."""
    journal = Journal(path)
    journal.write({"kind": "listening", "pid": os.getpid(), "time_nano": start_nano - 1_000_000_000})
    number, events = 0, []
    for raw in synthetic_events(requests, start_nano, label):
        made = requests_for(raw)
        if number + len(made) > requests:
            break
        nano = raw["timeNano"]
        for i, (method, path_, query, answer) in enumerate(made):
            number += 1
            begin = nano - 500_000 + i * 100_000
            journal.write({"kind": "request", "request": number, "method": method, "path": path_, "query": query,
                           "time_nano": begin})
            fields = {name: value for name, value in answer.items() if name != "pushed"}
            journal.write({"kind": "response", "request": number, "status": 201 if fields else 200, **fields,
                           "time_nano": begin + 50_000})
            if "pushed" in answer:
                journal.write({"kind": "pushed", "request": number, **answer["pushed"], "time_nano": nano})
            journal.write({"kind": "end", "request": number,
                           "time_nano": nano + 200_000 if i == len(made) - 1 else begin + 80_000})
        events.append(raw)
    journal.close()
    return events


def line_count(path):
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def attribution_cost(folder, args):
    """Two builds at once (their events 0.5 ms apart), each with a journal of --requests requests:
    µs per decision on --events of their events, and whether each went to its own build."""
    journals, owners = {}, {}
    for build_id, label, offset in ((1, "a", 0), (2, "b", 500_000)):
        journals[build_id] = str(folder / f"{build_id}.jsonl")
        for raw in write_journal(journals[build_id], label, T0 + offset, args.requests):
            owners[raw["timeNano"]] = (build_id, raw)
    windows = BuildWindows()
    for build_id in journals:
        windows.open(build_id, T0 - 2_000_000_000)
    attributor = Attributor(windows)
    start = time.perf_counter()
    for build_id, path in journals.items():
        attributor.follow(build_id, path)
    read = time.perf_counter() - start
    facts = sum(line_count(path) for path in journals.values())
    stamps = sorted(owners)
    sample = sorted(random.Random(16).sample(stamps, min(args.events, len(stamps))))  # the events' own mix
    records = [parse_event(owners[stamp][1]) for stamp in sample]
    rounds = []
    for _ in range(5):  # the median round: a busy spell of a shared machine does not decide it
        spent, decisions = {"container": 0.0, "image": 0.0}, []
        for record in records:
            start = time.perf_counter()
            decisions.append(attributor.decide(record, final=False) or attributor.decide(record, final=True))
            spent[record["event_type"]] += time.perf_counter() - start
        rounds.append(spent)
    spent = sorted(rounds, key=lambda spent: sum(spent.values()))[len(rounds) // 2]
    count = {kind: sum(record["event_type"] == kind for record in records) for kind in spent}
    pairs = [(decision, owners[record["time_nano"]][0]) for decision, record in zip(decisions, records)]
    alone = sum(decision.builds == [build_id] for decision, build_id in pairs)
    shared = sum(build_id in decision.builds and len(decision.builds) > 1 for decision, build_id in pairs)
    print(f"attribution: 2 builds, {args.requests} requests each in their journals ({facts} facts, "
          f"{(stamps[-1] - stamps[0]) / 1e9:.1f} s of events): read in {read * 1000:.0f} ms ({read / facts * 1e6:.1f} "
          f"µs a fact); Attributor.decide on {len(records)} events: {sum(spent.values()) / len(records) * 1e6:.0f} "
          f"µs an event (median of 5 rounds; containers' {spent['container'] / count['container'] * 1e6:.0f} µs, "
          f"images' {spent['image'] / count['image'] * 1e6:.0f} µs; target: printed); "
          f"{sum(decision.exact for decision in decisions)} decided exactly, {alone} to their own build alone, "
          f"{shared} to both (the same image pulled by both within a second)")


# -- the run ------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a small run: {QUICK}")
    parser.add_argument("--calls", type=int, default=300, help="GET /version round trips each way")
    parser.add_argument("--cli", type=int, default=20, help="`docker version` runs each way")
    parser.add_argument("--size", type=int, default=1024, help="build context size in MiB")
    parser.add_argument("--builds", type=int, default=3, help="builds each way and with each builder (median)")
    parser.add_argument("--requests", type=int, default=5000, help="requests in each of the two builds' journals")
    parser.add_argument("--events", type=int, default=1000, help="events attributed")
    args = parser.parse_args()
    if args.quick:  # options given explicitly still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args()

    work = Path(short_tempdir("de-"))  # the endpoint's socket path must stay under 108 bytes
    os.environ["DOCKER_CONFIG"] = str(work / "docker-config")  # the CLI's config: not the user's
    attribution_cost(work, args)
    daemon = DockerDaemon()
    daemon.start()
    endpoint = None
    try:
        direct = daemon.host.removeprefix("unix://")
        endpoint = endpoints.start(directory=work, daemon_path=direct, journal=work / "endpoint.jsonl",
                                   log=work / "endpoint.log")
        through = endpoints.socket_path(work)
        idle = rss_kib(endpoint.pid)
        client = daemon.client()
        image = import_busybox_image(client).tags[0]

        for path in (direct, through):  # warm both
            version_round_trip(path)
        cpu0 = cpu_seconds(endpoint.pid)
        print_latency("GET /version", latencies(version_round_trip, direct, through, args.calls), args.calls, 2)
        print_latency("docker version", latencies(lambda host: cli_version(DEBIAN_DOCKER, host), direct, through,
                                                  args.cli), args.cli, 1)
        calls = args.calls + args.cli
        print(f"endpoint CPU for {calls} calls: {(cpu_seconds(endpoint.pid) - cpu0) / calls * 1e6:.0f} µs a call; "
              f"RSS idle {idle / 1024:.1f} MiB (just started), {rss_kib(endpoint.pid) / 1024:.1f} MiB after the calls")

        context = make_context(work / "context", image, args.size)
        for builder in ("classic", "buildkit"):
            compare_builds(builder, context, direct, through, endpoint.pid, client, args)
        journal = work / "endpoint.jsonl"
        print(f"endpoint journal: {line_count(journal)} facts, {journal.stat().st_size / 1024:.0f} KiB "
              f"for the whole run; RSS {rss_kib(endpoint.pid) / 1024:.1f} MiB at its end")
        client.close()
    finally:
        if endpoint is not None:
            endpoints.stop(*endpoints.identity(endpoint), endpoint)
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
