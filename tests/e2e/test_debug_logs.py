"""LOG_LEVEL=DEBUG never logs a credential: the HTTP and AWS libraries stay at INFO (settings'
LOGGING), since at DEBUG botocore logs whole requests and responses (the external ID, the assumed
role's keys and session token, the ECR token).

Commands run as processes, as an operator would run them, on the real registry, moto and daemon.
"""

import base64
import uuid

import pytest

from tests.factories import EcrConnectionFactory, LoginConnectionFactory, RegistryConnectionFactory
from tests.harness import Registry

pytestmark = [pytest.mark.e2e]

# moto's ECR token is AWS / <registry id>-auth-token; a registry with that login stands in for ECR.
ECR_PASSWORD = "123456789012-auth-token"
# What a logged request or response body gives away even where the value is not known beforehand:
# moto makes new temporary keys for every AssumeRole, and its session tokens start with this.
BODY_MARKERS = ("SecretAccessKey", "SessionToken", "authorizationToken", "FQoGZXIvYXdzEBYaD")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secrets_of(*connections) -> list[str]:
    """Every secret of the connections, as stored and as they travel (Basic auth, ECR's token)."""
    found = [ECR_PASSWORD, b64(f"AWS:{ECR_PASSWORD}")]
    for connection in connections:
        if connection.password:
            found += [connection.password, b64(f"{connection.username}:{connection.password}")]
        found += [value for value in (connection.secret_access_key, connection.external_id) if value]
    return found


def assert_no_secret(result, secrets):
    output = result.stdout + result.stderr
    leaked = [s for s in (*secrets, *BODY_MARKERS) if s in output]
    assert not leaked, f"{leaked} in the output:\n{output[-4000:]}"


@pytest.fixture
def ecr_registry(start_service):
    return start_service(Registry(username="AWS", password=ECR_PASSWORD))


def ecr_connection(project, ecr_registry, moto_server):
    return EcrConnectionFactory(
        project=project, registry=ecr_registry.address, endpoint_url=moto_server.endpoint_url,
        credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci-push",
        external_id=f"ext-{uuid.uuid4().hex}",
    )


def test_log_level_debug_is_debug_for_everything_but_the_http_libraries(manage):
    script = ("import logging; print(*(logging.getLevelName(logging.getLogger(name).getEffectiveLevel()) for name in "
              "('', 'builds', 'botocore.endpoint', 'botocore.parsers', 'urllib3.connectionpool', 'docker.auth')))")
    result = manage("shell", "-c", script, LOG_LEVEL="DEBUG", DJANGO_SETTINGS_MODULE="dockersupport_site.settings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "DEBUG DEBUG INFO INFO INFO INFO"


@pytest.fixture
def debug_stack(docker_daemon, transactional_db):
    """A server and an agent, both at LOG_LEVEL=DEBUG: their logs are scanned too."""
    from builds.agents.services import agent_token_issue
    from tests.conftest import start
    from tests.e2e.conftest import RunningAgent, database_url
    from tests.harness import AgentProcess, ServerProcess

    server = start(ServerProcess(database_url(), LOG_LEVEL="DEBUG"))
    _, token, _ = agent_token_issue(name="debug-agent")
    process = start(AgentProcess(server.url, token, docker_daemon.host, LOG_LEVEL="DEBUG"))
    yield server, RunningAgent(name="debug-agent", process=process, docker_host=docker_daemon.host)
    process.stop()
    server.stop()


def test_connection_tests_log_no_secret_at_debug(manage, registry, moto_server, ecr_registry, transactional_db):
    connection = RegistryConnectionFactory(registry=registry.address, username=registry.username,
                                           password=registry.password)
    ecr = ecr_connection(connection.project, ecr_registry, moto_server)
    for tested in (connection, ecr):
        result = manage("test_connection", tested.project.ident, tested.ident, LOG_LEVEL="DEBUG")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("OK")
        assert_no_secret(result, secrets_of(connection, ecr))


def test_a_build_logs_no_secret_at_debug(manage, debug_stack, registry_configuration, private_image, registry,
                                         ecr_registry, moto_server, docker_client, busybox_image):
    server, agent = debug_stack
    project = registry_configuration.project
    ecr = ecr_connection(project, ecr_registry, moto_server)
    LoginConnectionFactory(configuration=registry_configuration, connection=ecr, position=1)
    pushed = f"{ecr_registry.address}/team/app-{uuid.uuid4().hex[:8]}:1"
    script = f"docker pull {private_image} && docker tag {private_image} {pushed} && docker push {pushed}"
    result = manage("run_build", registry_configuration.ident, "--", "sh", "-c", script, LOG_LEVEL="DEBUG",
                    DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"logged in with {ecr} → {ecr_registry.address}" in result.stdout
    # The push reached the ECR stand-in through the build's login.
    assert docker_client.api.inspect_distribution(pushed, auth_config=ecr_registry.auth_config)["Descriptor"]
    secrets = secrets_of(registry_configuration.logins.get(position=0).connection, ecr)
    assert_no_secret(result, secrets)
    agent_log, server_log = agent.process.log(), open(server.log_path, errors="replace").read()
    assert "DEBUG" in agent_log + server_log  # the logs were at DEBUG
    for name, log in (("agent", agent_log), ("server", server_log)):
        leaked = [s for s in (*secrets, *BODY_MARKERS) if s in log]
        assert not leaked, f"{leaked} in the {name}'s log:\n{log[-4000:]}"
