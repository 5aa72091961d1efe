"""Bad input to the REST API is a 4xx that names the field and changes nothing, never a 500."""

import json
import threading
import time

import pytest

from builds.login import services
from builds.models import AgentJob, Build
from tests.factories import (
    AgentFactory,
    BuildConfigurationFactory,
    BuildFactory,
    RegistryConnectionFactory,
    api_token_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, admin_user):
    token = api_token_for(admin_user)

    def call(method, url, data=None):
        return getattr(client, method)(url, data=json.dumps(data) if data is not None else None,
                                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {token}")

    return call


@pytest.fixture
def configuration():
    return BuildConfigurationFactory(ident="app")


@pytest.fixture
def agent():
    """An agent that never connected: a start or finish that reaches it is a 504, never a 5xx of ours."""
    return AgentFactory(name="agent-1")


@pytest.fixture
def logged_in_build(configuration, agent):
    build = services.build_start(configuration=configuration, agent=agent, started_by=Build.StartedBy.API)
    Build.objects.filter(pk=build.pk).update(docker_config="/var/lib/dockersupport-agent/configs/app-1-x")
    build.refresh_from_db()
    return build


@pytest.mark.parametrize("number", ["²", "٣x", "abc", "1.5", "0", "-1", "2147483648", "9" * 5000])
def test_a_number_filter_that_is_no_build_number_is_a_400_naming_it(api, number):
    response = api("get", f"/api/v1/builds/?number={number}")
    assert response.status_code == 400
    assert response.json() == {"number": ["a build number is a whole number from 1 to 2147483647"]}


def test_the_largest_build_number_is_a_filter(api, configuration, agent):
    BuildFactory(configuration=configuration, agent=agent, number=2147483647)
    response = api("get", "/api/v1/builds/?number=2147483647")
    assert response.status_code == 200
    assert [b["number"] for b in response.json()["results"]] == [2147483647]


@pytest.mark.parametrize("number", [10**23, 2**31, 0, "²"])
def test_a_start_with_a_number_no_build_can_have_is_a_400_and_creates_nothing(api, configuration, agent, number):
    response = api("post", "/api/v1/builds/", {"configuration": "app", "agent": "agent-1", "number": number})
    assert response.status_code == 400
    assert response.json() == {"number": ["a build number is a whole number from 1 to 2147483647"]}
    assert not Build.objects.exists()


@pytest.mark.parametrize("exit_code", [2**63 + 1, 2**31, -(2**31) - 1])
def test_a_finish_with_an_exit_code_out_of_range_is_a_400_and_changes_nothing(api, logged_in_build, exit_code):
    response = api("post", f"/api/v1/builds/{logged_in_build.pk}/finish/", {"exit_code": exit_code})
    assert response.status_code == 400
    assert response.json() == {"exit_code": ["an exit code is a whole number from -2147483648 to 2147483647"]}
    logged_in_build.refresh_from_db()
    assert logged_in_build.is_running and logged_in_build.exit_code is None
    assert logged_in_build.logged_out_at is None
    assert not AgentJob.objects.exists()  # no logout was asked of the agent


@pytest.mark.parametrize("url, field", [
    ("/api/v1/builds/?configuration=app%00", "configuration"),
    ("/api/v1/builds/{id}/docker-info/?image=busy%00box", "image"),
    ("/api/v1/builds/{id}/docker-info/?action=pull%00", "action"),
])
def test_a_nul_character_in_a_query_parameter_is_a_400_naming_it(api, configuration, agent, url, field):
    build = BuildFactory(configuration=configuration, agent=agent)
    response = api("get", url.format(id=build.pk))
    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize("field", ["configuration", "agent"])
def test_a_nul_character_in_a_start_is_a_400_naming_the_field(api, configuration, agent, field):
    data = {"configuration": "app", "agent": "agent-1", field: "app\x00"}
    response = api("post", "/api/v1/builds/", data)
    assert response.status_code == 400
    assert response.json() == {field: ["Null characters are not allowed."]}
    assert not Build.objects.exists()


@pytest.mark.parametrize("project, connection, field", [("acme%00", "local", "project"),
                                                         ("acme", "lo%00cal", "connection")])
def test_a_nul_character_in_a_connection_path_is_a_400_naming_it(api, project, connection, field):
    RegistryConnectionFactory(project__ident="acme", ident="local")
    response = api("post", f"/api/v1/projects/{project}/connections/{connection}/test/")
    assert response.status_code == 400
    assert response.json() == {field: ["Null characters are not allowed."]}


def test_an_unknown_action_filter_is_a_400_naming_it(api, configuration, agent):
    build = BuildFactory(configuration=configuration, agent=agent)
    response = api("get", f"/api/v1/builds/{build.pk}/docker-info/?action=pul")
    assert response.status_code == 400
    assert response.json() == {"action": ['"pul" is not a valid choice.']}


def test_huge_pagination_numbers_are_a_page_not_a_database_error(api, configuration, agent):
    BuildFactory.create_batch(3, configuration=configuration, agent=agent)
    everything = api("get", f"/api/v1/builds/?limit={10**23}")
    assert everything.status_code == 200
    assert len(everything.json()["results"]) == 3
    past_the_end = api("get", f"/api/v1/builds/?offset={10**23}")
    assert past_the_end.status_code == 200
    assert past_the_end.json()["results"] == []


@pytest.mark.parametrize("build_id", ["1.5", "x", str(10**23)])
def test_a_malformed_build_id_is_the_apis_json_404(api, build_id):
    response = api("get", f"/api/v1/builds/{build_id}/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "detail" in response.json()


def test_the_schema_declares_the_field_errors_a_bad_start_answers(api):
    schema = api("get", "/api/v1/schema/?format=json").json()
    bad_start = schema["paths"]["/api/v1/builds/"]["post"]["responses"]["400"]["content"]["application/json"]
    field_errors, detail = bad_start["schema"]["oneOf"]
    assert field_errors["additionalProperties"] == {"type": "array", "items": {"type": "string"}}
    assert detail["required"] == ["detail"]


def test_the_next_number_after_the_highest_one_is_a_clear_error(db):
    from builds.login.services import BuildStartError, build_start
    from tests.factories import AgentFactory, BuildFactory

    highest = BuildFactory(number=2_147_483_647)
    with pytest.raises(BuildStartError, match="has used the highest build number"):
        build_start(configuration=highest.configuration, agent=AgentFactory())


def _agent_fails_its_next_job(agent_pk: int, error: str) -> threading.Thread:
    """An agent that takes its next job and reports it failed with `error` (an agent may say nothing)."""
    from django.db import connection

    from agent import protocol
    from builds.agents import services as agent_services
    from builds.models import Agent

    def run():
        try:
            agent = Agent.objects.get(pk=agent_pk)
            for _ in range(400):
                jobs = agent_services.jobs_claim(agent=agent)
                if jobs:
                    agent_services.job_complete(agent=agent, job_id=jobs[0].id,
                                                outcome=protocol.JobResult(ok=False, error=error))
                    return
                time.sleep(0.05)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("error", ["", "daemon refused the login"])
def test_a_login_or_logout_the_agent_reports_failed_is_a_502_even_without_a_reason(api, configuration, error,
                                                                                     settings):
    from django.utils import timezone

    settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT = 30
    agent = AgentFactory(name="agent-1", last_seen_at=timezone.now())
    failing = _agent_fails_its_next_job(agent.pk, error)
    response = api("post", "/api/v1/builds/", {"configuration": "app", "agent": "agent-1"})
    failing.join()
    assert response.status_code == 502, response.content
    assert response.json()["detail"] == (error or "the agent's login job failed without saying why")
    assert Build.objects.get(pk=response.json()["id"]).status == Build.Status.ERROR
    AgentJob.objects.all().delete()  # the failed build's own logout, which the agent would do next

    build = services.build_start(configuration=configuration, agent=agent, started_by=Build.StartedBy.API)
    failing = _agent_fails_its_next_job(agent.pk, error)
    response = api("post", f"/api/v1/builds/{build.pk}/finish/", {"exit_code": 0})
    failing.join()
    assert response.status_code == 502, response.content
    assert response.json()["detail"] == (error or "the agent's logout job failed without saying why")
