"""The server as deployed: uvicorn (ASGI) with the production settings, without DEBUG, behind a TLS
proxy; the admin's static files through whitenoise, the health endpoint, the metrics."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography.fernet import Fernet

from tests.conftest import start
from tests.e2e.conftest import ROOT, database_url
from tests.harness import ServerProcess

pytestmark = [pytest.mark.e2e]
PROXIED = {"X-Forwarded-Proto": "https"}  # what the TLS proxy in front adds


def production(tmp_path, **env):
    settings = {"SECRET_KEY": "deploy-test-" + "x" * 40, "DOCKERSUPPORT_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "ALLOWED_HOSTS": "127.0.0.1", "BEHIND_TLS_PROXY": "true", "STATIC_ROOT": str(tmp_path / "static"),
                "DEBUG": "0", **env}
    collected = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT,
                               env={**os.environ, **settings, "DATABASE_URL": database_url(),
                                    "DJANGO_SETTINGS_MODULE": "dockersupport_site.settings"},
                               capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr
    return start(ServerProcess(database_url(), settings_module="dockersupport_site.settings", asgi=True, **settings))


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode(errors="replace")


@pytest.fixture
def deployed(tmp_path, redis_url, transactional_db):
    server = production(tmp_path, CELERY_BROKER_URL=redis_url, CACHE_URL=redis_url.replace("redis://", "rediscache://"))
    yield server
    server.stop()


def test_the_admin_is_styled_without_debug(deployed):
    status, _, page = get(f"{deployed.url}/admin/login/", PROXIED)
    assert status == 200 and "/static/admin/css/base.css" in page
    status, headers, css = get(f"{deployed.url}/static/admin/css/base.css", PROXIED)
    assert status == 200 and headers["Content-Type"].startswith("text/css") and "body" in css


def test_health_answers_a_load_balancer_by_address_over_http(deployed):
    status, _, body = get(f"{deployed.url}/health/", {"Host": "10.9.8.7"})  # no proxy header, no allowed host
    assert status == 200, body
    assert '"status": "ok"' in body and '"database": "ok"' in body and '"broker": "ok"' in body
    assert '"cache": "ok"' in body


def test_health_says_which_service_fails_and_nothing_more(tmp_path, transactional_db):
    server = production(tmp_path, CELERY_BROKER_URL="redis://:broker-password-7@127.0.0.1:1/0")
    try:
        status, _, body = get(f"{server.url}/health/")
        assert status == 503, body
        assert '"status": "failing"' in body and '"broker": "failing' in body and '"database": "ok"' in body
        assert "broker-password-7" not in body and "127.0.0.1:1" not in body
    finally:
        server.stop()


def test_metrics_count_requests_and_the_products_state(deployed):
    get(f"{deployed.url}/admin/login/", PROXIED)
    status, _, text = get(f"{deployed.url}/metrics")
    assert status == 200
    for name in ("django_http_requests_total_by_view_transport_method_total", "dockersupport_agents{connected=",
                 "dockersupport_builds_running", "dockersupport_event_records_waiting",
                 "dockersupport_event_records_ingested_last_hour",
                 "dockersupport_celery_queue_length", "dockersupport_cleanup_images_total{outcome=\"deleted\"}"):
        assert name in text, name


UNITS = ROOT / "deploy" / "systemd"


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's [Service] settings: name -> values (ExecStartPre may come several times)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def on_this_machine(command: str, **replacements) -> list[str]:
    """A unit's command with this checkout for /opt/dockersupport, and test stand-ins for the rest."""
    command = command.replace("/opt/dockersupport/.venv/bin/python", sys.executable)
    command = command.replace("/opt/dockersupport/.venv/bin/celery", str(ROOT / ".venv" / "bin" / "celery"))
    for old, new in replacements.items():
        command = command.replace(old, new)
    return command.split()


def test_the_systemd_units_are_valid():
    import shutil

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run(["systemd-analyze", "verify", *map(str, UNITS.glob("*.service"))], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "is not executable" not in line]  # /opt/... here
    assert not problems, result.stderr


def test_the_units_commands_run_the_server_and_an_agent(tmp_path, redis_url, docker_daemon, transactional_db,
                                                         registry_configuration, home):
    """What the units start, started here with their own command lines: web (migrate, collectstatic,
    uvicorn), worker and beat on PostgreSQL and Redis, and an agent that runs a build through them."""
    import time

    from builds.agents.services import agent_token_issue
    from builds.models import Build
    from tests.harness import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKERSUPPORT_", "CELERY_", "DJANGO_"))}
    server_env = {**env, "DATABASE_URL": database_url(), "CELERY_BROKER_URL": redis_url,
                  "CACHE_URL": redis_url.replace("redis://", "rediscache://"), "SECRET_KEY": "units-" + "x" * 44,
                  "DOCKERSUPPORT_ENCRYPTION_KEY": os.environ["DOCKERSUPPORT_ENCRYPTION_KEY"],
                  "ALLOWED_HOSTS": "127.0.0.1", "BEHIND_TLS_PROXY": "true", "STATIC_ROOT": str(tmp_path / "static"),
                  # Reached directly here, not through the TLS proxy (which redirects plain HTTP itself).
                  "SECURE_SSL_REDIRECT": "false", "DJANGO_SETTINGS_MODULE": "dockersupport_site.settings"}
    processes = []

    def run(argv, environment, name):
        log = open(tmp_path / f"{name}.log", "w")
        process = subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        processes.append(process)
        return tmp_path / f"{name}.log"

    def wait(log, text, what):
        deadline = time.monotonic() + 90
        while text not in log.read_text():
            assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

    try:
        web = unit("dockersupport-web.service")
        for command in web["ExecStartPre"]:
            done = subprocess.run(on_this_machine(command), cwd=ROOT, env=server_env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, done.stderr
        web_log = run(on_this_machine(web["ExecStart"][0], **{"--port 8000": f"--port {port}",
                                                              "--workers 4": "--workers 2"}), server_env, "web")
        wait(web_log, "Application startup complete", "the web server")
        run(on_this_machine(unit("dockersupport-worker.service")["ExecStart"][0]), server_env, "worker")
        beat_log = run(on_this_machine(unit("dockersupport-beat.service")["ExecStart"][0],
                                       **{"/tmp/celerybeat-schedule": str(tmp_path / "beat-schedule")}),
                       server_env, "beat")
        status, _, body = get(f"http://127.0.0.1:{port}/health/")
        assert status == 200 and '"broker": "ok"' in body, body
        wait(beat_log, "beat: Starting", "beat")

        _, token, _ = agent_token_issue(name="unit-agent")
        (tmp_path / "agent.token").write_text(token)
        (tmp_path / "agent.token").chmod(0o600)
        agent = unit("dockersupport-agent.service")
        agent_env = {"PATH": os.environ["PATH"], "HOME": str(home), "DOCKER_HOST": docker_daemon.host,
                     "DOCKERSUPPORT_AGENT_DIR": str(tmp_path / "agent")}
        agent_log = run(on_this_machine(agent["ExecStart"][0], **{
            "https://ci.example.com": f"http://127.0.0.1:{port}",
            "/etc/dockersupport/agent.token": str(tmp_path / "agent.token")}), agent_env, "agent")
        wait(agent_log, "ready:", "the agent")
        build = subprocess.run([sys.executable, "manage.py", "run_build", registry_configuration.ident, "--",
                                "docker", "version"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={"PATH": os.environ["PATH"], "HOME": str(home),
                                    "DOCKERSUPPORT_AGENT_DIR": str(tmp_path / "agent")})
        assert build.returncode == 0, build.stdout + build.stderr
        assert Build.objects.get(configuration=registry_configuration).status == Build.Status.SUCCEEDED
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, 15)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, 9)
