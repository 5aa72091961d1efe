"""Schemathesis over the whole REST API, in process: no input is a 5xx, and every answer is one the
OpenAPI schema (/api/v1/schema/) declares — its status code, content type and body.

The schema is loaded from the Django application itself (WSGI: no server, no Docker) and each
operation gets a bounded, derandomized run, so CI is repeatable and quick. A few real rows are
seeded, and the generated identifiers are often swapped for theirs, so that requests reach real
builds, configurations, agents and connections instead of only 404s.
"""

from datetime import timedelta

import hypothesis
import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections, transaction
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agent import protocol
from builds.agents import services as agent_services
from builds.models import Build, DockerOperation, PushedImage
from connections.models import Membership
from dockersupport_site.wsgi import application
from tests.factories import (
    AgentFactory,
    BuildConfigurationFactory,
    BuildFactory,
    RegistryConnectionFactory,
    api_token_for,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# 502 and 504 are the API's own answers when an agent's task fails or no agent worker answers (the
# seeded agent has no daemon, so a build started on it gets a 502); status_code_conformance still
# requires each operation to declare them. Any other 5xx fails.
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "504"]}}}
)
# Loaded once, at collection, from the application: the schema view needs no database.
# (schemathesis.pytest.from_fixture would load it per test, but it does not work with pytest 9.)
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application, config=CONFIG)

# The seeded rows' identifiers by where they go (path, query, body) and name; filled by the
# `seeded` fixture before any case is generated. No body number: a new build needs a new one.
REAL: dict[str, dict[str, list]] = {}
# Values that broke this API before and that random generation rarely makes: NUL characters
# (PostgreSQL refuses them in text), a digit that str.isdigit() accepts and int() does not, and
# numbers beyond what an integer column (2**31) or any 64-bit one holds.
NASTY = ["app\x00", "²", 2**31, -(2**31) - 1, 10**23, -(2**63) - 1]


def _names(operation, location: str) -> list[str]:
    if location == "body":
        return sorted({name for body in operation.body for name in body.optimized_schema.get("properties", {})})
    return [parameter.name for parameter in (operation.path_parameters if location == "path" else operation.query)]


def _steered(values, operation, location: str):
    """The generated values; or the same with the seeded identifiers put in; or that, with one
    name given a nasty value. So that requests reach real rows, also with bad input."""
    names = _names(operation, location)
    if not isinstance(values, dict) or not names:
        return st.just(values)
    real = REAL.get(location, {})
    seeded = st.fixed_dictionaries({name: st.sampled_from(real[name]) for name in names if name in real})
    seeded = seeded.map(lambda chosen: {**values, **chosen})
    spoiled = st.tuples(seeded, st.sampled_from(names), st.sampled_from(NASTY)).map(
        lambda chosen: {**chosen[0], chosen[1]: chosen[2]})
    return st.one_of(st.just(values), seeded, spoiled)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    return _steered(path_parameters, context.operation, "path")


@schema.hook
def flatmap_query(context, query):
    return _steered(query or {}, context.operation, "query")


@schema.hook
def flatmap_body(context, body):
    return _steered(body, context.operation, "body")


@pytest.fixture
def in_test_transaction(db):
    """Requests go through the real WSGI handler, which closes the database connection after each
    one (close_old_connections) and would so end the test's transaction: like Django's test client,
    the handler is kept from doing that while the test runs."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(in_test_transaction, admin_user, django_user_model, settings, tmp_path):
    """A superuser's token, and a project with a connection, a configuration, an agent, and builds
    (one finished) with Docker operations and a pushed image.

    The agent's Docker endpoint is a socket that does not exist and the connection's registry a
    closed local port, so a build started or a connection tested through the API fails at once
    instead of waiting for a daemon or a registry.
    """
    settings.DOCKERSUPPORT_AGENT_JOB_WAIT = 0  # the job poll answers at once: bounded waits
    settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT = 1
    configuration = BuildConfigurationFactory(ident="app")
    connection = RegistryConnectionFactory(project=configuration.project, ident="local", registry="127.0.0.1:1")
    agent = AgentFactory(name="agent-1", docker_host=f"unix://{tmp_path}/no-daemon.sock")
    running = BuildFactory(configuration=configuration, agent=agent, number=1)
    finished = BuildFactory(configuration=configuration, agent=agent, number=2, status=Build.Status.FAILED,
                            exit_code=1, finished_at=timezone.now(), warnings=["an optional login failed"])
    start = timezone.now() - timedelta(minutes=1)
    nano = int(start.timestamp() * 1e9)
    container = {"container_id": "c1", "container_name": "web", "actor_id": "c1"}
    for offset, event_type, action, extra in [
        (0, "image", "pull", {"image": "busybox", "tag": "latest", "actor_id": "busybox:latest"}),
        (1, "container", "start", {"image": "busybox", **container}),
        (2, "container", "die", {"image": "busybox", **container, "exit_code": 3}),
        (3, "image", "push", {"image": "127.0.0.1:1/app", "tag": "1", "actor_id": "127.0.0.1:1/app:1"}),
    ]:
        DockerOperation.objects.create(build=running, agent=agent, time=start + timedelta(seconds=offset),
                                       time_nano=nano + offset * 10**9, event_type=event_type, action=action,
                                       raw_action=action, **extra)
    PushedImage.objects.create(build=running, project=configuration.project, configuration_ident="app",
                               build_number=1, registry="127.0.0.1:1", repository="app", tag="1",
                               digest="sha256:" + "a" * 64, pushed_at=timezone.now())
    REAL.clear()
    REAL.update(
        path={"id": [running.pk, finished.pk], "project": [configuration.project.ident],
              "connection": [connection.ident]},
        query={"configuration": ["app"], "number": [1, 2], "action": ["pull", "die"], "image": ["busy"]},
        body={"configuration": ["app"], "agent": ["agent-1"]},
    )
    _, agent_token, _ = agent_services.agent_token_issue(name="agent-1")
    protocol_header = {protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION)}
    viewer = django_user_model.objects.create_user("viewer", password="pw-viewer")
    Membership.objects.create(project=configuration.project, user=viewer, role=Membership.Role.VIEWER)
    yield {
        "user": {"Authorization": f"Token {api_token_for(admin_user)}"},
        "viewer": {"Authorization": f"Token {api_token_for(viewer)}"},
        "agent": {"Authorization": f"Bearer {agent_token}", **protocol_header},
        "build": {"Authorization": f"Bearer {agent_services.build_token_issue(running)}", **protocol_header},
    }
    REAL.clear()


def credentials_for(path: str, seeded: dict) -> dict:
    """The user's token for the user API; the agent's for the agent protocol; the running build's for
    that build's own requests (the protocol's build tokens)."""
    if path.startswith("/api/v1/agent/builds/{"):
        return seeded["build"]
    if path.startswith("/api/v1/agent/"):
        return seeded["agent"]
    return seeded["user"]


@schema.parametrize()
@hypothesis.settings(max_examples=50, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])
def test_no_input_is_a_server_error_and_every_answer_is_declared(case, seeded):
    # Each case starts from the seeded rows (a finish must find its build still running), and a
    # database error in one cannot spoil the next.
    with transaction.atomic():
        case.call_and_validate(headers=credentials_for(case.operation.path, seeded), checks=CHECKS)
        transaction.set_rollback(True)


# The same, as a viewer of the seeded project: its builds are visible, every action on them is refused.
@schema.include(path_regex="^/api/v1/(builds|projects)/").parametrize()
@hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])
def test_a_viewer_meets_no_server_error_and_only_declared_answers(case, seeded):
    with transaction.atomic():
        case.call_and_validate(headers=seeded["viewer"], checks=CHECKS)
        transaction.set_rollback(True)
