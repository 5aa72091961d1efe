"""Fixtures for end-to-end tests: an agent on the harness's daemon, a private image in the
harness's registry, and `manage` to run manage.py commands as separate processes (as a CI would)
against the test database."""

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection as db

from tests.factories import AgentFactory, BuildConfigurationFactory, LoginConnectionFactory, ProjectFactory

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the test database this test session created."""
    s = db.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    credentials = quote(s["USER"] or "") + (f":{quote(s['PASSWORD'])}" if s["PASSWORD"] else "")
    return f"postgres://{credentials}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture(autouse=True)
def config_root(tmp_path, settings):
    root = tmp_path / "build-configs"
    settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT = root
    return root


@pytest.fixture
def home(tmp_path):
    """An empty HOME for commands, to prove ~/.docker/config.json is never written."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def manage(transactional_db, config_root, home):
    """manage(*args, **env) → CompletedProcess of `python manage.py ARGS` on the test database."""

    def run(*args, timeout=120, **env):
        environment = command_env(config_root, home, **env)
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def agent(docker_daemon, transactional_db):
    return AgentFactory(name=f"agent-{uuid.uuid4().hex[:6]}", docker_host=docker_daemon.host)


@pytest.fixture
def private_image(docker_client, busybox_image, registry):
    """An image that only exists in the harness's registry, behind its login."""
    repository = f"{registry.address}/private/app-{uuid.uuid4().hex[:8]}"
    docker_client.images.get(busybox_image).tag(repository, "1")
    for line in docker_client.images.push(repository, "1", auth_config=registry.auth_config, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{repository}:1")
    return f"{repository}:1"


@pytest.fixture
def registry_configuration(registry, transactional_db):
    """A build configuration that logs in to the harness's registry."""
    project = ProjectFactory()
    configuration = BuildConfigurationFactory(project=project)
    LoginConnectionFactory(
        configuration=configuration,
        connection__project=project, connection__registry=registry.address,
        connection__username=registry.username, connection__password=registry.password,
    )
    return configuration


def command_env(config_root, home, **extra) -> dict:
    """The environment of a command on the test database. manage.py picks the settings module as it
    does for users (agent_settings for run_build); the test keys come from test_settings' os.environ."""
    environment = {
        **os.environ, "DATABASE_URL": database_url(), "DOCKERSUPPORT_BUILD_CONFIG_ROOT": str(config_root),
        "HOME": str(home), **extra,
    }
    for name in ("DOCKER_CONFIG", "DJANGO_SETTINGS_MODULE", "DEBUG"):
        if name not in extra:
            environment.pop(name, None)
    return environment


@pytest.fixture
def processes(tmp_path):
    """start(name, args, env, ready=text) → Popen; waits until `ready` appears in its output; all stopped after."""
    import time

    started = []

    def start(name, args, env, ready, timeout=60):
        log = tmp_path / f"{name}.log"
        handle = open(log, "w")
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        started.append((process, handle))
        deadline = time.monotonic() + timeout
        while ready not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        process.log = log
        return process

    yield start
    for process, handle in reversed(started):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        handle.close()
