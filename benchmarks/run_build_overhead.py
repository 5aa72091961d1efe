"""run_build overhead: `run_build CFG -- true` (with one registry login) vs `true` alone, and the
agent's memory when idle.

Starts its own Docker daemon and registry (tests/harness), a server (SQLite in a temporary
folder, served by uvicorn as in production) and an agent with only its token, as on a
build host. Prints the medians in
milliseconds, everything included (login, event window, logout, the Docker Info summary):
warm (the agent verified the login on its daemon in the last minutes) against the target of
100 ms, and cold (the first build after the agent started: the daemon asks the registry).

    .venv/bin/python benchmarks/run_build_overhead.py [--runs 21] [--cold-runs 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import AgentProcess, DockerDaemon, Registry, ServerProcess  # noqa: E402

BEFORE_MS = 570  # run_build before the agent (Django, the database and the Docker SDK on every step)
TARGET_MS = 100
KEY = "x4wSSpAHrwsH3EYuxkHzGm9cR4bEXcWyxt8Qz5e5xHA="


def timed_ms(command, env) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--cold-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, DockerDaemon() as daemon, Registry() as registry:
        database = f"sqlite:///{folder}/db.sqlite3"
        server_env = {**os.environ, "DATABASE_URL": database, "DOCKERSUPPORT_ENCRYPTION_KEY": KEY,
                      "SECRET_KEY": "benchmark", "DJANGO_SETTINGS_MODULE": "dockersupport_site.test_settings",
                      "REGISTRY_PASSWORD": registry.password}
        settings_file = Path(folder, "settings.yaml")
        settings_file.write_text(
            "projects:\n  - id: bench\n    connections:\n"
            f"      - {{id: reg, type: docker-registry, registry: '{registry.address}', username: ci,"
            " password: '${REGISTRY_PASSWORD}'}\n"
            "    build_configurations:\n      - {id: bench, docker_support: {login: [reg]}}\n"
        )
        for step in (["migrate", "-v0"], ["apply_settings", str(settings_file)]):
            subprocess.run([sys.executable, "manage.py", *step], env=server_env, cwd=ROOT, check=True,
                           capture_output=True)
        token = subprocess.run([sys.executable, "manage.py", "agent_token", "bench-agent"], env=server_env,
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
        with ServerProcess(database, asgi=True, DOCKERSUPPORT_ENCRYPTION_KEY=KEY, SECRET_KEY="benchmark") as server, \
                AgentProcess(server.url, token, daemon.host) as agent:
            # What a CI job's environment has: no server setting; the agent's folder.
            env = {"PATH": os.environ["PATH"], "HOME": folder, "DOCKERSUPPORT_AGENT_DIR": agent.directory}
            command = [sys.executable, "manage.py", "run_build", "bench", "--", "true"]
            cold = []
            for _ in range(args.cold_runs):
                agent.restart()  # a new agent has verified nothing yet
                cold.append(timed_ms(command, env))
            timed_ms(command, env)  # the login is verified now
            warm = [timed_ms(command, env) for _ in range(args.runs)]
            bare = statistics.median(timed_ms(["true"], env) for _ in range(args.runs))
            time.sleep(5)
            idle_rss = rss_mib(agent.process.pid)
    added_warm, added_cold = statistics.median(warm) - bare, statistics.median(cold) - bare
    print(f"run_build overhead (medians of {args.runs} warm and {args.cold_runs} cold runs, one registry login, "
          "Docker Info summary included):")
    print(f"  true alone:                       {bare:8.1f} ms")
    print(f"  run_build -- true, warm:          {statistics.median(warm):8.1f} ms   added {added_warm:6.1f} ms "
          f"(target <= {TARGET_MS} ms: {'met' if added_warm <= TARGET_MS else 'NOT met'}; before the agent: "
          f"{BEFORE_MS} ms, {BEFORE_MS / max(added_warm, 0.1):.1f}x less now)")
    print(f"  run_build -- true, cold:          {statistics.median(cold):8.1f} ms   added {added_cold:6.1f} ms "
          "(the daemon verifies the login with the registry)")
    print(f"  warm min / max:                   {min(warm):8.1f} / {max(warm):.1f} ms")
    print(f"  agent memory when idle (RSS):     {idle_rss:8.1f} MiB")


if __name__ == "__main__":
    main()
