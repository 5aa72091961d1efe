"""`make demo` (scripts/demo.sh) loads a configuration that runs with `make run` on this machine, says what
it loaded and how to run a demo build, and names what the machine lacks, each checked for real.

Like tests/test_run_scripts.py, each test runs the scripts in a copy of the project in a temporary
directory, on the copy's own SQLite database: the real .env and var/ are never touched.
"""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests import test_run_scripts
from tests.harness import free_port

ROOT = test_run_scripts.ROOT

project = test_run_scripts.project  # the project copied to a temporary folder (with demo/)


def environment(**extra) -> dict:
    """A shell's environment without the test session's configuration (the copy uses its own .env and var/)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKERSUPPORT_", "CELERY_", "DJANGO_", "DEMO_"))
           and k not in ("DATABASE_URL", "CACHE_URL", "SECRET_KEY", "DEBUG", "DOCKER_HOST", "AGENT_NAME", "PORT")}
    return {**env, "PYTHON": sys.executable, **extra}


def make_demo(project, **extra):
    return subprocess.run(["bash", "scripts/demo.sh"], cwd=project, env=environment(**extra), capture_output=True,
                          text=True, timeout=300)


def run_sh_agent_name() -> str:
    """The name of the agent `make run` starts, as scripts/run.sh says."""
    return re.search(r'agent_token "\$\{AGENT_NAME:-([\w.-]+)\}"', (ROOT / "scripts" / "run.sh").read_text())[1]


def stored(project, sql: str) -> list[tuple]:
    with sqlite3.connect(project / "var" / "db.sqlite3") as db:
        return db.execute(sql).fetchall()


def test_make_demo_on_a_bare_machine_loads_a_runnable_configuration_and_names_what_is_missing(project, tmp_path):
    no_daemon = tmp_path / "no-docker.sock"
    registry = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = make_demo(project, DOCKER_HOST=f"unix://{no_daemon}", DEMO_REGISTRY=registry,
                       DOCKERSUPPORT_AGENT_DIR=str(tmp_path / "agent"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    agent = run_sh_agent_name()

    # What it loaded, said.
    assert "Applied demo/settings.yaml" in out
    assert "project acme (ACME)" in out and "project acme-web (Web), a subproject of acme" in out
    assert f"connection local (Local registry): Docker registry {registry}, user ci" in out
    assert "build configuration app (App image): logs in to local (optional)" in out
    assert f"agent {agent}: serves every project (shared)" in out
    assert "demo-password" not in out + result.stderr  # the registry password is never shown

    # How to run a demo build: through the agent `make run` starts, in its folder.
    assert "make run" in out
    assert (f"DOCKERSUPPORT_AGENT_DIR={tmp_path / 'agent'} {sys.executable} manage.py run_build app --agent {agent} "
            "-- docker run --rm busybox:1 echo 'hello from a demo build'") in out

    # What is missing, checked.
    assert f"MISSING  no Docker daemon at unix://{no_daemon}: {no_daemon} does not exist" in out
    assert f"MISSING  demo registry not reachable at {registry}:" in out and "Connection refused" in out
    assert "the build runs without it, with a warning (its login is optional)" in out
    assert f"MISSING  the agent {agent} is not running (nothing answers at {tmp_path / 'agent' / 'agent.sock'}" in out
    assert "things are missing for the demo build" in out

    # The configuration can run with what `make run` starts: its only login optional, its agent that one,
    # shared (serves the demo's project) and on its daemon's defaults.
    assert stored(project, "select c.ident, l.optional from builds_loginconnection l "
                           "join connections_connection c on c.id = l.connection_id") == [("local", 1)]
    assert stored(project, "select name, docker_host, shared from builds_agent") == [(agent, "", 1)]
    assert stored(project, "select count(*) from builds_agent_projects") == [(0,)]


def test_make_demo_twice_changes_nothing_the_second_time(project, tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path / 'none.sock'}", "DEMO_REGISTRY": f"127.0.0.1:{free_port()}"}
    assert make_demo(project, **env).returncode == 0
    again = make_demo(project, **env)
    assert again.returncode == 0, again.stderr
    assert "projects: 0 created, 0 updated, 2 unchanged" in again.stdout
    assert "agents: 0 created, 0 updated, 1 unchanged" in again.stdout


@pytest.mark.e2e
def test_the_demo_build_runs_with_make_run_where_docker_and_the_registry_are(project, docker_daemon, registry,
                                                                            busybox_image):
    """On a machine with a daemon and the demo registry, `make demo` finds both, and the demo configuration
    runs a build through the agent that `make run` (scripts/run.sh) starts, logged in to the registry."""
    port, agent_dir = free_port(), project / "var" / "agent"
    env = {"DOCKER_HOST": docker_daemon.host, "DEMO_REGISTRY": registry.address,
           "DEMO_REGISTRY_USERNAME": registry.username, "DEMO_REGISTRY_PASSWORD": registry.password,
           "PORT": str(port)}
    demo = make_demo(project, **env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"ok       the Docker daemon at {docker_daemon.host} answers (Docker " in demo.stdout
    assert f"ok       the demo registry at {registry.address} accepts connection local" in demo.stdout
    assert registry.password not in demo.stdout + demo.stderr

    log = project / "run.log"
    with open(log, "w") as output:
        server = subprocess.Popen(["bash", "scripts/run.sh"], cwd=project, start_new_session=True, stdout=output,
                                  stderr=subprocess.STDOUT,
                                  env=environment(**env, DJANGO_SUPERUSER_USERNAME="admin",
                                                  DJANGO_SUPERUSER_PASSWORD="admin-password-1"))
    try:
        deadline = time.monotonic() + 120
        while f"dockersupport agent {run_sh_agent_name()} ready" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        # The demo's command pulls busybox:1 from Docker Hub; the harness's daemon has no network, so a
        # local image instead, through the same configuration and agent.
        build = subprocess.run(
            [sys.executable, "manage.py", "run_build", "app", "--agent", run_sh_agent_name(), "--",
             "sh", "-c", f'test -s "$DOCKER_CONFIG/config.json" && docker run --rm --network none {busybox_image} '
                         'echo hello from a demo build'],
            cwd=project, env=environment(DOCKERSUPPORT_AGENT_DIR=str(agent_dir)), capture_output=True, text=True,
            timeout=300)
        assert build.returncode == 0, build.stdout + build.stderr + log.read_text()[-3000:]
        assert "hello from a demo build" in build.stdout
        assert stored(project, "select status, logged_in_registries from builds_build") == [
            ("succeeded", f'["{registry.address}"]')]
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
