"""The build API: start (login on the agent), finish (logout), list, heartbeat.

The API is called in process (Django's test client) or over HTTP; either way the login and the
logout are jobs that a real agent process takes from the server process. The broker test runs a
server on Redis with a Celery worker, as in production.
"""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from builds.models import Build
from tests.e2e.conftest import command_env, database_url
from tests.factories import api_token_for

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def api(client, admin_user):
    token = api_token_for(admin_user)

    def call(method, url, data=None):
        return getattr(client, method)(url, data=json.dumps(data) if data is not None else None,
                                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")

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
    # The build's own Docker endpoint (exact attribution), next to its config.
    assert body["docker_host"] == f"unix://{body['docker_config']}/docker.sock"
    version = subprocess.run(["docker", "version", "--format", "{{.Server.APIVersion}}"], capture_output=True,
                             text=True, env={**os.environ, "DOCKER_HOST": body["docker_host"]})
    assert version.returncode == 0 and version.stdout.strip(), version.stderr

    response = api("post", f"/api/v1/builds/{body['id']}/finish/", {"exit_code": 0})
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert not config.exists() and list(config_root.iterdir()) == []
    assert not agent.process.endpoint_processes()  # the endpoint ended with the build
    again = api("post", f"/api/v1/builds/{body['id']}/finish/", {"exit_code": 0})
    assert again.status_code == 409 and "has already finished (succeeded)" in again.json()["detail"]
    assert registry.password not in caplog.text


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
    [message] = response.json()["number"]
    assert "build number 5 of configuration" in message and "--" not in message  # the API's words, not run_build's


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


def test_an_agent_that_is_not_connected_is_a_504_at_once(api, registry_configuration):
    from tests.factories import AgentFactory

    idle = AgentFactory()
    response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": idle.name})
    assert response.status_code == 504
    assert f"agent {idle.name} did not answer" in response.json()["detail"] and "never connected" in \
        response.json()["detail"]
    assert Build.objects.get().status == Build.Status.ERROR


def test_a_build_of_a_project_the_agent_does_not_serve_is_refused(api, start_agent, registry_configuration):
    from tests.factories import ProjectFactory

    agent = start_agent(projects=[ProjectFactory()])
    response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident, "agent": agent.name})
    assert response.status_code == 400
    assert "does not run builds of project" in response.json()["agent"][0]
    assert not Build.objects.exists()


def test_an_api_build_is_logged_in_within_two_seconds(api, agent, registry_configuration):
    """The agent's long-poll hands it the login job at once, not at its next ping."""
    import time

    durations = []
    for number in range(1, 6):
        began = time.monotonic()
        response = api("post", "/api/v1/builds/", {"configuration": registry_configuration.ident,
                                                   "agent": agent.name, "number": number})
        durations.append(time.monotonic() - began)
        assert response.status_code == 201, response.content
        api("post", f"/api/v1/builds/{response.json()['id']}/finish/", {"exit_code": 0})
    # A generous bound (the benchmark measures it): most logins come back far sooner.
    assert sorted(durations)[2] < 5, durations


@pytest.fixture
def broker_stack(redis_url, docker_daemon, home, admin_user, processes, transactional_db):
    """A server on the Redis broker with a Celery worker of the server queue, and an agent on it."""
    import redis

    from builds.agents.services import agent_token_issue
    from tests.conftest import start
    from tests.harness import AgentProcess, ServerProcess

    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    env = {"CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
           "CACHE_URL": redis_url.replace("redis://", "rediscache://"), "DOCKERSUPPORT_AGENT_HEARTBEAT_INTERVAL": "1"}
    server = start(ServerProcess(database_url(), **env))
    celery = str(Path(sys.executable).with_name("celery"))
    processes("worker", [celery, "-A", "dockersupport_site", "worker", "-Q", "server", "-P", "solo",
                         "--without-gossip", "--without-mingle", "-l", "info"],
              command_env(home, DJANGO_SETTINGS_MODULE="dockersupport_site.test_settings", **env), ready="ready.")
    name = "broker-agent"
    _, token, _ = agent_token_issue(name=name)
    agent = start(AgentProcess(server.url, token, docker_daemon.host))
    session = requests.Session()
    session.headers["Authorization"] = f"Token {api_token_for(admin_user)}"
    session.base = f"{server.url}/api/v1"
    yield session, agent, name, broker
    agent.stop()
    server.stop()
    broker.flushdb()


def test_with_a_broker_builds_are_logged_in_out_and_recorded_and_no_secret_reaches_redis(
        broker_stack, registry_configuration, registry, private_image, home):
    api, agent, name, broker = broker_stack
    response = api.post(f"{api.base}/builds/", json={"configuration": registry_configuration.ident, "agent": name},
                        timeout=90)
    assert response.status_code == 201, response.text
    body = response.json()
    pulled = subprocess.run(["docker", "pull", private_image], capture_output=True, text=True,
                            env={**os.environ, "DOCKER_CONFIG": body["docker_config"],
                                 "DOCKER_HOST": body["docker_host"], "HOME": str(home)})
    assert pulled.returncode == 0, pulled.stderr
    response = api.post(f"{api.base}/builds/{body['id']}/finish/", json={"exit_code": 0}, timeout=90)
    assert response.status_code == 200, response.text
    assert not Path(body["docker_config"]).exists()
    build = Build.objects.get(pk=body["id"])
    assert build.status == Build.Status.SUCCEEDED
    assert build.operations.filter(action="pull").exists()  # ingested by the Celery worker
    # Whatever went through Redis (task messages, results, the cache): no credential.
    everything = redis_contents(broker)
    assert b"builds.ingest_event_batch" in everything or broker.keys("celery-task-meta-*")  # it did carry tasks
    secrets = [registry.password, registry_configuration.logins.get().connection.password,
               base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()]
    for secret in secrets:
        assert secret.encode() not in everything


def redis_contents(broker) -> bytes:
    """Every value in the Redis database, with Celery message bodies decoded (they are base64)."""
    values = []
    for key in broker.keys("*"):
        kind = broker.type(key)
        if kind == b"string":
            values.append(broker.get(key) or b"")
        elif kind == b"list":
            values.extend(broker.lrange(key, 0, -1))
        elif kind == b"hash":
            values.extend(v for pair in broker.hgetall(key).items() for v in pair)
        elif kind in (b"set", b"zset"):
            values.extend(broker.smembers(key) if kind == b"set" else broker.zrange(key, 0, -1))
    decoded = []
    for value in values:
        try:
            message = json.loads(value)
            decoded.append(base64.b64decode(message["body"]))
        except (ValueError, TypeError, KeyError):
            pass
    return b"\n".join(values + decoded)
