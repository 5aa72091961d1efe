"""Load: many agents (50 by default) speaking the real protocol to the production set-up on this machine.

Starts a throw-away PostgreSQL database, uses Redis as broker and cache, and runs the server as in
deploy/: uvicorn (ASGI, --workers 2) and a Celery worker of the server queue (concurrency 2). The
agents are asyncio clients of the protocol (httpx), each with its own token: they connect, beat
every DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL seconds with jitter and wait for jobs in long-polls;
while "building" they start builds back to back through `POST /api/v1/agent/builds/`, send each
build's Docker operations in batches (sent again until acknowledged, as the agent's spool does)
and finish it. Three phases:

  idle      only heartbeats and job polls: requests per agent per minute;
  builds    every agent builds: builds started per second, events per second ingested end to end
            (from the first batch sent to the last operation in PostgreSQL), p95 latency of each
            kind of request;
  restart   the same, with the web server stopped and started again in the middle.

After each building phase every operation sent must be in the database, once: nothing lost. The
load generator shares the 2 cores with the server, so its own CPU is printed apart from the
server's (uvicorn, Celery, PostgreSQL, Redis).

    .venv/bin/python benchmarks/agents_load.py [--agents 50] [--idle 60] [--build 60] [--records 600]
"""

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
from _common import DEFAULT_DATABASE_URL, T0, django_setup, synthetic_events, throwaway_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import ServerProcess, existing_redis_url  # noqa: E402

BENCH_DATABASE = "dockersupport_load"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Stats:
    def __init__(self):
        self.latency = defaultdict(list)  # request kind -> seconds
        self.requests = 0
        self.failures = defaultdict(int)
        self.builds_started = 0
        self.builds_finished = 0
        self.start_failures = 0
        self.records_sent = 0

    def reset(self):
        self.__init__()


class SimulatedAgent:
    def __init__(self, number: int, token: str, server: str, stats: Stats, records: list[dict]):
        self.number, self.token, self.stats, self.records = number, token, stats, records
        self.client = httpx.AsyncClient(base_url=f"{server}/api/v1/agent", timeout=httpx.Timeout(60, read=90),
                                        headers={"Authorization": f"Bearer {token}", "X-Dockersupport-Protocol": "1"},
                                        limits=httpx.Limits(max_connections=4))
        self.seq = 1_000_000_000 * (number + 1)
        self.settings = None
        self.building = False  # the phase wants builds
        self.current: int | None = None  # the build it is running now (its heartbeats name it)
        self.stopped = False

    async def request(self, kind, method, path, *, retry=True, token=None, **kwargs):
        """The protocol's retry: transport errors and 5xx again with backoff (as agent.server_api.retrying)."""
        delay = 0.5
        while True:
            began = time.perf_counter()
            unsent = False
            try:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                response = await self.client.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                response, unsent = None, isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            self.stats.requests += 1
            if response is not None and response.status_code < 500:
                self.stats.latency[kind].append(time.perf_counter() - began)
                return response
            self.stats.failures[kind] += 1
            # "connect": only what never reached the server is sent again (a build start, as the agent's).
            if not retry or self.stopped or (retry == "connect" and not unsent):
                return response
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, 10)

    async def run(self):
        hello = {"agent_version": "load", "hostname": f"sim-{self.number}", "os": "linux",
                 "daemon": {"ok": True, "version": "sim", "docker_host": "unix:///sim.sock"}}
        self.settings = (await self.request("connect", "POST", "/connect/", json=hello)).json()
        await asyncio.gather(self.beat(), self.poll(), self.build())

    async def beat(self):
        interval = self.settings["heartbeat_interval"]
        while not self.stopped:
            await asyncio.sleep(interval * (0.8 + random.random() * 0.4))
            running = [self.current] if self.current is not None else []
            await self.request("heartbeat", "POST", "/heartbeat/",
                               json={"daemon": {"ok": True}, "running_builds": running})

    async def poll(self):
        while not self.stopped:
            await self.request("jobs (long-poll)", "GET", "/jobs/",
                               params={"wait": self.settings["job_wait"], "session": self.settings["session"]})

    async def build(self):
        while not self.stopped:
            if not self.building:
                await asyncio.sleep(0.2)
                continue
            started = await self.request("build start", "POST", "/builds/", json={"configuration": "load"},
                                         retry="connect")
            if started is None or started.status_code != 201:
                self.stats.start_failures += 1  # as run_build: a start that failed is not sent again
                await asyncio.sleep(1)
                continue
            self.stats.builds_started += 1
            build = started.json()
            self.current = build["build"]["id"]
            records = [{**record, "builds": [build["build"]["id"]]} for record in self.records]
            for i in range(0, len(records), 200):
                chunk = records[i:i + 200]
                first, last = self.seq + 1, self.seq + len(chunk)
                while True:  # the same batch until it is taken, as the spool's sender
                    answer = await self.request("events", "POST", "/events/",
                                                json={"first_seq": first, "last_seq": last, "records": chunk})
                    if answer is not None and answer.status_code == 200 and answer.json()["acked"] >= last:
                        break
                    await asyncio.sleep(0.5)
                self.seq = last
                self.stats.records_sent += len(chunk)
            finished = await self.request("build finish", "POST", f"/builds/{build['build']['id']}/finish/",
                                          token=build["token"], json={"exit_code": 0, "events_through": self.seq})
            if finished is not None and finished.status_code in (200, 401):
                self.stats.builds_finished += 1
            self.current = None

    async def close(self):
        self.stopped = True
        await self.client.aclose()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return found


def pids_of(name: str) -> list[int]:
    result = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def p95(values):
    values = sorted(values)
    return values[max(0, int(len(values) * 0.95) - 1)] if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60, help="seconds of the idle phase")
    parser.add_argument("--build", type=float, default=60, help="seconds of each building phase")
    parser.add_argument("--records", type=int, default=600, help="Docker operations per build")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    args = parser.parse_args()
    redis = (existing_redis_url() or "redis://127.0.0.1:6379/15").rsplit("/", 1)[0] + "/14"
    # The counts the phases read from PostgreSQL are quick queries, made between asyncio steps.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with throwaway_database(args.database_url, BENCH_DATABASE) as database_url:
        django_setup(database_url)
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)
        from agent.events import parse_event
        from builds.agents.services import agent_token_issue
        from builds.models import Build, DockerOperation
        from tests.factories import BuildConfigurationFactory

        BuildConfigurationFactory(ident="load")
        tokens = [agent_token_issue(name=f"load-{n}")[1] for n in range(args.agents)]
        records = [parse_event(event) for event in synthetic_events(args.records, T0, "load")]
        env = {"CELERY_BROKER_URL": redis, "CACHE_URL": redis.replace("redis://", "rediscache://"),
               "CELERY_RESULT_BACKEND": redis, "ALLOWED_HOSTS": "127.0.0.1,localhost"}
        import redis as redis_client

        redis_client.Redis.from_url(redis).flushdb()
        server = ServerProcess(database_url, asgi=True, **env)
        server.workers = 2
        original_command = server._command
        server._command = lambda: [*original_command(), "--workers", "2"]
        server.start()
        worker_env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE":
                      "dockersupport_site.test_settings", **env}
        worker = subprocess.Popen([str(ROOT / ".venv" / "bin" / "celery"), "-A", "dockersupport_site", "worker", "-Q",
                                   "server", "--concurrency", "2", "-l", "warning"], cwd=ROOT, env=worker_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        stats = Stats()
        results = {}
        try:
            def server_pids():
                return tree(server.process.pid) + tree(worker.pid) + pids_of("postgres") + pids_of("redis-server")

            async def run():
                agents = [SimulatedAgent(n, token, server.url, stats, records) for n, token in enumerate(tokens)]
                tasks = [asyncio.create_task(agent.run()) for agent in agents]
                await asyncio.sleep(5)  # all connected

                async def phase(name, seconds, building, restart=False):
                    stats.reset()
                    operations_before = DockerOperation.objects.count()
                    cpu_server, cpu_self, began = cpu_seconds(server_pids()), time.process_time(), time.monotonic()
                    for agent in agents:
                        agent.building = building
                    if restart:
                        await asyncio.sleep(seconds / 2)
                        cpu_server -= cpu_seconds(tree(server.process.pid))  # what the stopped server used
                        server.stop(keep_data=True)  # SIGTERM, as systemctl restart
                        await asyncio.sleep(2)
                        server.start()  # the new one's start-up counts: it is part of a restart
                        await asyncio.sleep(seconds / 2)
                    else:
                        await asyncio.sleep(seconds)
                    for agent in agents:
                        agent.building = False
                    while any(agent.current is not None for agent in agents):  # builds under way end
                        await asyncio.sleep(0.1)
                    elapsed = time.monotonic() - began
                    sent = stats.records_sent
                    # End to end: until every operation sent is in PostgreSQL.
                    deadline = time.monotonic() + 300
                    stored = DockerOperation.objects.count() - operations_before
                    while building and stored < sent and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)
                        stored = DockerOperation.objects.count() - operations_before
                    ingested_after = time.monotonic() - began
                    results[name] = {
                        "seconds": elapsed, "requests": stats.requests, "latency": dict(stats.latency),
                        "failures": dict(stats.failures), "builds_started": stats.builds_started,
                        "builds_finished": stats.builds_finished, "start_failures": stats.start_failures,
                        "sent": sent, "stored": stored, "ingested_after": ingested_after,
                        "cpu_server": cpu_seconds(server_pids()) - cpu_server,
                        "cpu_self": time.process_time() - cpu_self,
                    }

                await phase("idle", args.idle, building=False)
                await phase("builds", args.build, building=True)
                await phase("restart", args.build, building=True, restart=True)
                for agent in agents:
                    await agent.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(run())
            builds_left_running = Build.objects.filter(status=Build.Status.RUNNING).count()
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
            server.stop()
    report(args, results, builds_left_running)


def report(args, results, builds_left_running):
    idle = results["idle"]
    per_minute = idle["requests"] / args.agents / (idle["seconds"] / 60)
    print(f"{args.agents} simulated agents against uvicorn (2 workers), a Celery worker (2 processes), PostgreSQL and "
          "Redis on this machine (2 cores, shared with the load generator):")
    print(f"\nidle ({idle['seconds']:.0f} s): {per_minute:.1f} requests per agent per minute (heartbeats and job "
          f"long-polls); server CPU {idle['cpu_server']:.1f} s ({idle['cpu_server'] / idle['seconds'] * 100:.0f}% of "
          f"one core), load generator CPU {idle['cpu_self']:.1f} s")
    for name in ("builds", "restart"):
        phase = results[name]
        lost = phase["sent"] - phase["stored"]
        print(f"\n{name} ({phase['seconds']:.0f} s{', web server stopped and started in the middle' if name == 'restart' else ''}):")
        print(f"  builds started: {phase['builds_started']} ({phase['builds_started'] / phase['seconds']:.1f}/s), "
              f"finished {phase['builds_finished']}, starts refused or lost in the restart: {phase['start_failures']}")
        print(f"  events ingested end to end: {phase['stored']} of {phase['sent']} sent, "
              f"{phase['stored'] / phase['ingested_after']:.0f}/s (all in PostgreSQL {phase['ingested_after']:.0f} s "
              f"after the phase began); lost: {lost} {'(nothing lost)' if lost == 0 else '(LOST!)'}")
        print("  agent requests (p50 / p95 / max ms):")
        for kind, values in sorted(phase["latency"].items()):
            print(f"    {kind:18s} {len(values):7d}  {statistics.median(values) * 1000:8.1f} {p95(values) * 1000:8.1f} "
                  f"{max(values) * 1000:9.1f}" + (f"   ({phase['failures'][kind]} retried)" if phase['failures'].get(kind)
                                                  else ""))
        print(f"  CPU: server {phase['cpu_server']:.1f} s ({phase['cpu_server'] / phase['seconds'] * 100:.0f}% of one "
              f"core), load generator {phase['cpu_self']:.1f} s ({phase['cpu_self'] / phase['seconds'] * 100:.0f}%)")
    print(f"\nbuilds left running at the end: {builds_left_running} (starts the server took while it was stopped, "
          "unknown to their agent: lost at its heartbeats after 2 minutes)")


if __name__ == "__main__":
    main()
