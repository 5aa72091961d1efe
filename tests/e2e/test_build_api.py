"""The build API: start (login on the agent), finish (logout), list, heartbeat.

In-process tests use the embedded mode (tasks run where they are enqueued); the worker tests run
the web server and a Celery worker of the agent's queue as separate processes on Redis.
"""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from builds.models import Build
from tests.e2e.conftest import command_env
from tests.harness import free_port

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def api(client, admin_user):
    token = Token.objects.create(user=admin_user)

    def call(method, url, data=None):
        return getattr(client, method)(url, data=json.dumps(data) if data is not None else None,
                                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")

    return call


def test_start_logs_in_and_finish_logs_out(api, agent, registry_configuration, registry, config_root, caplog):
    caplog.set_level("DEBUG")
    response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": agent.name})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["number"] == 1 and body["warnings"] == []
    config = Path(body["docker_config"]) / "config.json"
    assert list(json.loads(config.read_text())["auths"]) == [registry.address]
    assert registry.password not in response.content.decode()

    response = api("post", f"/api/v1/builds/{body['id']}/finish/", {"exit_code": 0})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert not config.exists() and list(config_root.iterdir()) == []
    again = api("post", f"/api/v1/builds/{body['id']}/finish/", {"exit_code": 0})
    assert again.status_code == 409 and "already succeeded" in again.json()["detail"]
    assert "builds.login" in caplog.text  # the task ran and was logged ...
    assert registry.password not in caplog.text  # ... without the secret


def test_list_is_newest_first_and_filters(api, agent, registry_configuration):
    for number in (1, 2, 3):
        assert api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": agent.name,
                                               "number": number}).status_code == 201
    listed = api("get", f"/api/v1/builds/?configuration={registry_configuration.ident}").json()["results"]
    assert [b["number"] for b in listed] == [3, 2, 1]
    assert all("password" not in json.dumps(b) for b in listed)
    [only] = api("get", f"/api/v1/builds/?configuration={registry_configuration.ident}&number=2").json()["results"]
    assert only["number"] == 2 and only["configuration"] == registry_configuration.ident


def test_bad_input_names_the_field_and_creates_nothing(api, agent, registry_configuration):
    response = api("post", "/api/v1/builds/", {"configuration": "nope", "agent": agent.name})
    assert response.status_code == 400
    assert "nope" in response.json()["configuration"][0]
    response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": "ghost"})
    assert response.status_code == 400 and "ghost" in response.json()["agent"][0]
    assert not Build.objects.exists()


def test_a_duplicate_number_is_refused(api, agent, registry_configuration):
    data = {"configuration": registry_configuration.ident, "agent": agent.name, "number": 5}
    assert api("post", "/api/v1/builds/", data).status_code == 201
    response = api("post", "/api/v1/builds/", data)
    assert response.status_code == 400
    assert "build 5 of configuration" in response.json()["number"][0]


def test_a_failed_login_answers_502_with_the_connection_named(api, agent, registry_configuration, config_root):
    connection = registry_configuration.logins.get().connection
    connection.password = "bad-pw-5e"
    connection.save()
    response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": agent.name})
    assert response.status_code == 502
    assert f"login with connection '{connection}'" in response.json()["detail"]
    assert "bad-pw-5e" not in response.content.decode()
    assert Build.objects.get().status == Build.Status.ERROR
    assert list(config_root.iterdir()) == []


def test_the_schema_documents_the_build_endpoints(api):
    schema = api("get", "/api/v1/schema/?format=json").json()
    for path in ("/api/v1/builds/", "/api/v1/builds/{id}/finish/", "/api/v1/builds/{id}/heartbeat/",
                 "/api/v1/projects/{project}/connections/{connection}/test/"):
        assert path in schema["paths"], path


@pytest.fixture
def stack(processes, redis_url, config_root, home, admin_user):
    """Starts the web server (and, on request, an agent worker) on the Redis broker."""
    token = Token.objects.create(user=admin_user)

    def start(agent=None, agent_task_timeout=60):
        env = command_env(config_root, home, CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url,
                          DOCKERSUPPORT_AGENT_TASK_TIMEOUT=str(agent_task_timeout),
                          DJANGO_SETTINGS_MODULE="dockersupport_site.test_settings")
        if agent is not None:
            celery = str(Path(sys.executable).with_name("celery"))
            processes("worker", [celery, "-A", "dockersupport_site", "worker", "-Q", agent.queue_name, "-P", "solo",
                                 "--without-gossip", "--without-mingle", "-l", "info", "-n", f"{agent.name}@%h"],
                      env, ready="ready.")
        port = free_port()
        processes("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], env,
                  ready="Quit the server")
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token.key}"
        session.base = f"http://127.0.0.1:{port}/api/v1"
        return session

    return start


def test_a_real_worker_on_the_agent_queue_logs_an_api_build_in_and_out(stack, agent, registry_configuration,
                                                                      private_image, config_root, home):
    api = stack(agent=agent)
    response = api.post(f"{api.base}/builds/", json={"configuration": registry_configuration.ident,
                                                     "agent": agent.name}, timeout=90)
    assert response.status_code == 201, response.text
    body = response.json()
    pulled = subprocess.run(["docker", "pull", private_image], capture_output=True, text=True,
                            env={**os.environ, "DOCKER_CONFIG": body["docker_config"], "DOCKER_HOST": agent.docker_host,
                                 "HOME": str(home)})
    assert pulled.returncode == 0, pulled.stderr
    response = api.post(f"{api.base}/builds/{body['id']}/finish/", json={"exit_code": 0}, timeout=90)
    assert response.status_code == 200, response.text
    assert not Path(body["docker_config"]).exists()
    assert Build.objects.get(pk=body["id"]).status == Build.Status.SUCCEEDED


def test_celery_messages_carry_ids_never_secrets(stack, agent, registry_configuration, registry, redis_url):
    """No worker takes the agent's queue, so the login message stays on Redis to be read raw."""
    import redis

    broker = redis.Redis.from_url(redis_url)
    broker.delete(agent.queue_name)
    api = stack(agent=None, agent_task_timeout=2)
    try:
        response = api.post(f"{api.base}/builds/", json={"configuration": registry_configuration.ident,
                                                         "agent": agent.name}, timeout=30)
        assert response.status_code == 504
        assert f"no worker of queue {agent.queue_name} answered" in response.json()["detail"]
        raw = broker.lrange(agent.queue_name, 0, -1)
        assert len(raw) == 1
        message = json.loads(raw[0])
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["task"] == "builds.login"
        assert (args, kwargs) == ([response.json()["id"]], {})
        everything = b"".join(raw) + base64.b64decode(message["body"])
        for secret in (registry.password, registry_configuration.logins.get().connection.password):
            assert secret.encode() not in everything
    finally:
        broker.delete(agent.queue_name)
