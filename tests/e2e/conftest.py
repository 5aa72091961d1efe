"""Fixtures for end-to-end tests: the server as a process on the test database, agents as
processes on the harness's daemons (each with only its token), a private image in the harness's
registry, and `manage` to run manage.py commands as separate processes (as a CI would)."""

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection as db

from tests.e2e.browser import open_page  # noqa: F401  (a fixture of every e2e test)
from tests.factories import BuildConfigurationFactory, LoginConnectionFactory, ProjectFactory

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the test database this test session created."""
    s = db.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    credentials = quote(s["USER"] or "") + (f":{quote(s['PASSWORD'])}" if s["PASSWORD"] else "")
    return f"postgres://{credentials}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture(autouse=True)
def quiet_database_before_flush(request):
    """After a test on the transactional database, wait (at most 15 s) until the server process has no
    transaction open on it: the flush truncates every table at once, and the server still ingesting an agent's
    last batch (its locks taken table by table) would deadlock with it."""
    if "transactional_db" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")  # set up before this fixture: torn down (flushed) after it
    yield
    if db.vendor != "postgresql":
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with db.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')")
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.05)


@pytest.fixture(scope="session")
def server(django_db_setup):
    """The server (runserver) on the test database, with short agent intervals: .url."""
    from tests.conftest import start
    from tests.harness import ServerProcess

    process = start(ServerProcess(database_url(), DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL="1",
                                  DOCKERSUPPORT_AGENT_TIMEOUT="8", DOCKERSUPPORT_AGENT_JOB_WAIT="5"))
    yield process
    process.stop()


@dataclass
class RunningAgent:
    name: str
    process: object
    docker_host: str

    @property
    def dir(self) -> Path:
        return Path(self.process.directory)

    @property
    def model(self):
        from builds.models import Agent

        return Agent.objects.get(name=self.name)


@pytest.fixture
def start_agent(server, docker_daemon, transactional_db):
    """start_agent(name=None, docker_host=None, projects=(), **env) → RunningAgent, stopped after the test."""
    from builds.agents.services import agent_token_issue
    from tests.conftest import start
    from tests.harness import AgentProcess

    started = []

    def run(name=None, docker_host=None, projects=(), **env):
        name = name or f"agent-{uuid.uuid4().hex[:6]}"
        model, token, _ = agent_token_issue(name=name)
        model.projects_assign(projects)
        process = AgentProcess(server.url, token, docker_host or docker_daemon.host, **env)
        started.append(process)
        start(process)
        return RunningAgent(name=name, process=process, docker_host=docker_host or docker_daemon.host)

    yield run
    for process in reversed(started):
        process.stop()


@pytest.fixture
def agent(start_agent):
    """An agent process on the harness's daemon, serving every project."""
    return start_agent()


@pytest.fixture
def config_root(agent):
    """Where the agent writes builds' Docker client configs."""
    return agent.dir / "configs"


@pytest.fixture
def home(tmp_path):
    """An empty HOME for commands, to prove ~/.docker/config.json is never written."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def manage(request, transactional_db, home):
    """manage(*args, **env) → CompletedProcess of `python manage.py ARGS`: server commands on the test
    database; run_build through the test's `agent` (its folder), when the test has one."""

    def run(*args, timeout=120, **env):
        if "agent" in request.fixturenames and "DOCKERSUPPORT_AGENT_DIR" not in env:
            env["DOCKERSUPPORT_AGENT_DIR"] = str(request.getfixturevalue("agent").dir)
        environment = command_env(home, **env)
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout)

    return run


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


def command_env(home, **extra) -> dict:
    """The environment of a command: the test database (which server commands use, and which
    run_build must not need), the test keys from test_settings' os.environ, an empty HOME."""
    environment = {**os.environ, "DATABASE_URL": database_url(), "HOME": str(home), **extra}
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
