"""`make run`'s scripts keep .env and var/ private, whatever an earlier run left behind.

scripts/env.sh works relative to the repository root (the scripts cd there), so each test runs
the scripts in a copy of the project in a temporary directory: the real .env and var/ are never
touched.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
# What manage.py needs to start with the real settings; copied, not linked, because the settings
# find .env and var/ from their own resolved location.
PROJECT = ("manage.py", "scripts", "dockersupport_site", "connections", "builds", "agent", "demo")


@pytest.fixture
def project(tmp_path):
    copy = tmp_path / "project"
    copy.mkdir()
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def manage_sh(project, *args):
    """scripts/manage.sh ARGS as `make` runs it, from a shell with the usual umask 022 and none of
    the test session's configuration, so that the copy's own .env and var/ are used."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DOCKERSUPPORT_", "CELERY_", "DJANGO_"))
                   and k not in ("DATABASE_URL", "CACHE_URL", "SECRET_KEY", "DEBUG")}
    environment["PYTHON"] = sys.executable
    return subprocess.run(["bash", "-c", 'umask 022 && exec scripts/manage.sh "$@"', "manage.sh", *args],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=300)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_existing_readable_env_and_var_are_made_private(project, tmp_path):
    env = project / ".env"
    env.write_text(f"DEBUG=1\nSECRET_KEY=test-only-{os.getpid()}\n"
                   f"DOCKERSUPPORT_ENCRYPTION_KEY={Fernet.generate_key().decode()}\n")
    env.chmod(0o644)
    var = project / "var"
    (var / "build-configs").mkdir(parents=True)
    var.chmod(0o755)
    (var / "build-configs").chmod(0o755)
    (var / "db.sqlite3").touch(mode=0o644)  # an empty file is a new SQLite database
    (var / "db.sqlite3").chmod(0o644)
    (var / "celerybeat-schedule").write_text("old")
    (var / "celerybeat-schedule").chmod(0o664)
    # A link inside var/ to a file elsewhere: that file is not the scripts' to change.
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (var / "link").symlink_to(outside)

    result = manage_sh(project, "migrate", "--no-input", "-v", "0")
    assert result.returncode == 0, result.stdout + result.stderr

    assert mode(env) == 0o600
    assert mode(var) == 0o700
    assert mode(var / "db.sqlite3") == 0o600
    assert mode(var / "build-configs") == 0o700
    assert mode(var / "celerybeat-schedule") == 0o600
    # Everything below var/, the files the migration created included (-wal, -shm), is private.
    readable = {str(p.relative_to(var)): oct(mode(p)) for p in var.rglob("*")
                if not p.is_symlink() and mode(p) & 0o077}
    assert readable == {}
    assert mode(outside) == 0o644
    assert (var / "db.sqlite3").stat().st_size > 0  # migrated: the database is the one Django used


def test_the_first_start_writes_a_private_env_and_database(project):
    result = manage_sh(project, "migrate", "--no-input", "-v", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Wrote .env with a new SECRET_KEY" in result.stdout
    env = project / ".env"
    assert mode(env) == 0o600
    assert "DOCKERSUPPORT_ENCRYPTION_KEY=" in env.read_text()
    assert mode(project / "var") == 0o700
    assert mode(project / "var" / "db.sqlite3") == 0o600


@pytest.mark.e2e
def test_make_run_serves_the_admin_with_a_local_agent_connected(project, docker_daemon):
    """scripts/run.sh (what `make run` runs): the server, a worker, beat and a local agent for the
    machine's Docker daemon, whose token was made for it; Ctrl-C stops all of them."""
    import signal
    import time
    import urllib.request

    from tests.harness import free_port

    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DOCKERSUPPORT_", "CELERY_", "DJANGO_"))
                   and k not in ("DATABASE_URL", "CACHE_URL", "SECRET_KEY", "DEBUG")}
    port = free_port()
    environment.update(PYTHON=sys.executable, PORT=str(port), DOCKER_HOST=docker_daemon.host,
                       DJANGO_SUPERUSER_USERNAME="admin", DJANGO_SUPERUSER_PASSWORD="admin-password-1")
    log = project / "run.log"
    with open(log, "w") as output:
        process = subprocess.Popen(["bash", "scripts/run.sh"], cwd=project, env=environment, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "dockersupport agent local ready" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert f"Docker daemon {docker_daemon.host}" in log.read_text()
        assert "NOT ANSWERING" not in log.read_text()
        token = (project / "var" / "agent-token").read_text().strip()
        assert token.startswith("dsa_") and mode(project / "var" / "agent-token") == 0o600
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10) as page:
            assert page.status == 200
        check = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from builds.models import Agent; a = Agent.objects.get(name='local'); "
             "print(a.daemon_ok, a.projects.count(), bool(a.last_seen_at))"],
            cwd=project, env={**environment, "PYTHONPATH": str(project)}, capture_output=True, text=True, timeout=60)
        assert check.stdout.split()[-3:] == ["True", "0", "True"], check.stdout + check.stderr  # shared: every project
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
