"""run_build overhead: `run_build CFG --agent A -- true` (with a registry login) vs `true` alone.

Starts its own Docker daemon and registry (tests/harness), an SQLite database in a temporary
folder, and prints the medians in milliseconds and their ratio. Target: ≤ 300 ms added.

    .venv/bin/python benchmarks/run_build_overhead.py [--runs 15]
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

from tests.harness import DockerDaemon, Registry  # noqa: E402


def median_ms(command, env, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        times.append((time.perf_counter() - start) * 1000)
        if result.returncode != 0:
            raise SystemExit(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, DockerDaemon() as daemon, Registry() as registry:
        env = {
            **os.environ, "DEBUG": "1",
            "DATABASE_URL": f"sqlite:///{folder}/db.sqlite3", "DOCKERSUPPORT_BUILD_CONFIG_ROOT": f"{folder}/configs",
            "DOCKERSUPPORT_ENCRYPTION_KEY": "x4wSSpAHrwsH3EYuxkHzGm9cR4bEXcWyxt8Qz5e5xHA=",
            "REGISTRY_PASSWORD": registry.password,
        }
        settings_file = Path(folder, "settings.yaml")
        settings_file.write_text(
            "projects:\n  - id: bench\n    connections:\n"
            f"      - {{id: reg, type: docker-registry, registry: '{registry.address}', username: ci,"
            " password: '${REGISTRY_PASSWORD}'}\n"
            "    build_configurations:\n      - {id: bench, docker_support: {login: [reg]}}\n"
            f"agents:\n  - {{name: bench-agent, docker_host: '{daemon.host}'}}\n"
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py picks the settings as it does for a user
        for step in (["migrate", "-v0"], ["apply_settings", str(settings_file)]):
            subprocess.run([sys.executable, "manage.py", *step], env=env, cwd=ROOT, check=True, capture_output=True)
        wrapped = median_ms([sys.executable, "manage.py", "run_build", "bench", "--agent", "bench-agent", "--", "true"],
                            env, args.runs)
        bare = median_ms(["true"], env, args.runs)
    added = wrapped - bare
    print(f"run_build overhead over {args.runs} runs (medians, with one registry login):")
    print(f"  true alone:            {bare:8.1f} ms")
    print(f"  run_build -- true:     {wrapped:8.1f} ms")
    print(f"  added by run_build:    {added:8.1f} ms   (target <= 300 ms: {'met' if added <= 300 else 'NOT met'})")
    print(f"  ratio wrapped / bare:  {wrapped / bare:8.1f} x")


if __name__ == "__main__":
    main()
