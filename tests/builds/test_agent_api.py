"""The agent protocol on the server: tokens and their scope, build tokens, events, jobs.

In process (Django's test client); the agent's side of it runs for real in tests/e2e.
"""

import threading
import time

import pytest
from django.utils import timezone

from agent import protocol
from builds.agents import services as agent_services
from builds.login import services
from builds.models import Agent, AgentJob, Build, DockerOperation, EventBatch
from tests.factories import (
    AgentFactory,
    BuildConfigurationFactory,
    LoginConnectionFactory,
    ProjectFactory,
    api_token_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def configuration():
    configuration = BuildConfigurationFactory(ident="app")
    LoginConnectionFactory(configuration=configuration, connection__password="registry-secret-19",
                           connection__registry="registry.example.test:5000")
    return configuration


def issue(name="agent-1"):
    agent, token, _ = agent_services.agent_token_issue(name=name)
    return agent, token


def start(call, token, configuration="app", **data):
    return call("post", "/api/v1/agent/builds/", token, {"configuration": configuration, **data})


def hello():
    return {"agent_version": "1.0", "hostname": "host-1", "os": "linux",
            "daemon": {"ok": True, "version": "20.10", "docker_host": "unix:///run/docker.sock"}}


def test_a_token_is_stored_hashed_and_a_new_one_replaces_it(call):
    agent, first = issue()
    assert first.startswith("dsa_") and first not in agent.token_hash
    assert call("post", "/api/v1/agent/connect/", first, hello()).status_code == 200
    _, second = issue()
    refused = call("post", "/api/v1/agent/connect/", first, hello())
    assert refused.status_code == 401 and "revoked or replaced" in refused.json()["detail"]
    assert call("post", "/api/v1/agent/connect/", second, hello()).status_code == 200


def test_a_revoked_token_is_refused_on_its_next_request(call):
    agent, token = issue()
    agent_services.agent_token_revoke(agent=agent)
    response = call("post", "/api/v1/agent/heartbeat/", token, {"daemon": {"ok": True}, "running_builds": []})
    assert response.status_code == 401


def test_another_protocol_version_is_refused_with_what_the_server_speaks(call):
    _, token = issue()
    response = call("post", "/api/v1/agent/connect/", token, hello(), HTTP_X_DOCKERSUPPORT_PROTOCOL="99")
    assert response.status_code == 426
    assert "speaks protocol 99" in response.json()["detail"]
    assert f"agent protocol {protocol.PROTOCOL_VERSION}" in response.json()["detail"]


def test_a_user_token_opens_no_agent_endpoint(call, admin_user):
    user_token = api_token_for(admin_user)
    assert call("post", "/api/v1/agent/connect/", user_token, hello()).status_code in (401, 403)


def test_connect_keeps_what_the_agent_says_and_answers_its_settings(call):
    agent, token = issue()
    agent.projects_assign([ProjectFactory(ident="acme")])
    response = call("post", "/api/v1/agent/connect/", token, hello())
    assert response.status_code == 200
    assert response.json()["name"] == "agent-1" and response.json()["projects"] == ["acme"]
    agent.refresh_from_db()
    assert (agent.hostname, agent.daemon_ok, agent.daemon_version) == ("host-1", True, "20.10")


def test_a_build_starts_with_its_own_token_and_its_credentials(call, configuration):
    _, token = issue()
    response = start(call, token)
    assert response.status_code == 201, response.content
    started = protocol.from_json(protocol.BuildStarted, response.json())
    assert started.build.number == 1 and started.token.startswith("dsb_")
    [login] = started.logins
    assert (login.registry, login.username, login.password) == ("registry.example.test:5000", "ci",
                                                                "registry-secret-19")
    build = Build.objects.get(pk=started.build.id)
    assert build.status == Build.Status.RUNNING and started.token not in build.token_hash


def test_an_agent_refuses_builds_of_projects_not_assigned_to_it(call, configuration):
    agent, token = issue()
    agent.projects_assign([ProjectFactory(ident="other")])
    response = start(call, token)
    assert response.status_code == 400
    assert "does not run builds of project" in response.json()["configuration"][0]
    assert not Build.objects.exists()


def test_an_agent_serves_the_subprojects_of_its_projects(call):
    parent = ProjectFactory(ident="parent")
    BuildConfigurationFactory(ident="child-app", project=ProjectFactory(ident="child", parent=parent))
    agent, token = issue()
    agent.projects_assign([parent])
    assert start(call, token, configuration="child-app").status_code == 201


def test_a_build_token_opens_its_own_build_only_and_only_while_it_runs(call, configuration):
    _, token = issue()
    first = start(call, token).json()
    second = start(call, token).json()
    url = "/api/v1/agent/builds/{}/{}/"
    # One build's token cannot read or finish another.
    assert call("get", url.format(second["build"]["id"], "credentials"), first["token"]).status_code == 403
    assert call("post", url.format(second["build"]["id"], "finish"), first["token"],
                {"exit_code": 0}).status_code == 403
    # The agent's own token is not a build token either.
    assert call("get", url.format(first["build"]["id"], "credentials"), token).status_code in (401, 403)
    assert call("get", url.format(first["build"]["id"], "credentials"), first["token"]).status_code == 200
    finished = call("post", url.format(first["build"]["id"], "finish"), first["token"], {"exit_code": 3})
    assert finished.status_code == 200 and finished.json()["status"] == "failed"
    # Ended: its token opens nothing any more.
    assert call("get", url.format(first["build"]["id"], "credentials"), first["token"]).status_code == 401


def test_an_agent_cannot_get_another_agents_build_credentials(call, configuration):
    _, token_a = issue("agent-a")
    _, token_b = issue("agent-b")
    build_a = start(call, token_a).json()
    # Agent B has no build token of A's build, and its own token is no build token.
    response = call("get", f"/api/v1/agent/builds/{build_a['build']['id']}/credentials/", token_b)
    assert response.status_code in (401, 403)
    assert "registry-secret-19" not in response.content.decode()


def test_a_failed_required_login_ends_the_build_as_not_run(call, configuration):
    _, token = issue()
    started = start(call, token).json()
    report = {"docker_config": "", "logged_in": [], "registries": [], "warnings": [],
              "error": "login with connection 'x' to registry.example.test:5000 failed: unauthorized"}
    assert call("post", f"/api/v1/agent/builds/{started['build']['id']}/logins/", started["token"],
                report).status_code == 200
    build = Build.objects.get(pk=started["build"]["id"])
    assert build.status == Build.Status.ERROR and "unauthorized" in build.error


def test_a_lost_build_is_recorded_as_lost(call, configuration):
    _, token = issue()
    started = start(call, token).json()
    response = call("post", f"/api/v1/agent/builds/{started['build']['id']}/finish/", started["token"],
                    {"lost": "run_build ended without finishing (killed?)"})
    assert response.status_code == 200 and response.json()["status"] == "lost"
    assert "killed" in Build.objects.get(pk=started["build"]["id"]).error


def record(build_ids, nano, action="tag", image="team/app", tag="1", raw_action=None):
    return {"time_nano": nano, "event_type": "image", "action": action, "raw_action": raw_action or action,
            "actor_id": "sha256:" + "a" * 64, "image": image, "tag": tag, "digest": "", "container_id": "",
            "container_name": "", "exit_code": None, "attributes": {}, "builds": build_ids}


def test_events_are_stored_once_per_build_they_belong_to_and_a_resent_batch_changes_nothing(call, configuration):
    _, token = issue()
    one = start(call, token).json()["build"]["id"]
    two = start(call, token).json()["build"]["id"]
    nano = time.time_ns()
    batch = {"first_seq": 1, "last_seq": 2, "records": [record([one, two], nano), record([two], nano + 1)]}
    for _ in range(2):
        response = call("post", "/api/v1/agent/events/", token, batch)
        assert response.status_code == 200 and response.json() == {"acked": 2}
    assert DockerOperation.objects.filter(build_id=one).count() == 1
    assert DockerOperation.objects.filter(build_id=two).count() == 2
    assert EventBatch.objects.get().ingested_at is not None


def test_events_naming_another_agents_build_are_not_stored_for_it(call, configuration):
    _, token_a = issue("agent-a")
    _, token_b = issue("agent-b")
    build_a = start(call, token_a).json()["build"]["id"]
    batch = {"first_seq": 1, "last_seq": 1, "records": [record([build_a], time.time_ns())]}
    assert call("post", "/api/v1/agent/events/", token_b, batch).status_code == 200
    assert not DockerOperation.objects.exists()


def test_an_event_with_a_long_action_is_cut_not_a_lost_batch(call, configuration):
    _, token = issue()
    build = start(call, token).json()["build"]["id"]
    long = record([build], time.time_ns(), raw_action="exec_start: sh -c " + "x" * 5000)
    batch = {"first_seq": 1, "last_seq": 2, "records": [long, record([build], time.time_ns() + 5)]}
    assert call("post", "/api/v1/agent/events/", token, batch).status_code == 200
    assert DockerOperation.objects.filter(build_id=build).count() == 2


def test_a_malformed_record_is_a_400_naming_it(call, configuration):
    _, token = issue()
    batch = {"first_seq": 1, "last_seq": 1, "records": [{"time_nano": "soon"}]}
    response = call("post", "/api/v1/agent/events/", token, batch)
    assert response.status_code == 400 and "records[0]" in response.json()["records"][0]


def test_finishing_answers_the_summary_of_the_builds_operations(call, configuration):
    _, token = issue()
    started = start(call, token).json()
    build = started["build"]["id"]
    batch = {"first_seq": 1, "last_seq": 1, "records": [record([build], time.time_ns(), action="pull",
                                                               image="busybox", tag="1")]}
    call("post", "/api/v1/agent/events/", token, batch)
    answer = call("post", f"/api/v1/agent/builds/{build}/finish/", started["token"],
                  {"exit_code": 0, "events_through": 1}).json()
    assert answer["status"] == "succeeded"
    assert answer["summary"]["images_pulled"] == ["busybox:1"]


def test_heartbeat_says_which_builds_the_server_has_closed(call, configuration):
    agent, token = issue()
    running = start(call, token).json()["build"]["id"]
    closed = start(call, token).json()
    call("post", f"/api/v1/agent/builds/{closed['build']['id']}/finish/", closed["token"], {"exit_code": 0})
    response = call("post", "/api/v1/agent/heartbeat/", token,
                    {"daemon": {"ok": False, "error": "no daemon"}, "running_builds": [running, closed["build"]["id"]]})
    assert response.json()["ended_builds"] == [closed["build"]["id"]]
    agent.refresh_from_db()
    assert agent.daemon_ok is False and agent.daemon_error == "no daemon"


def test_jobs_are_taken_once_and_their_result_recorded(call, configuration):
    agent, token = issue()
    job = agent_services.job_create(agent=agent, kind=AgentJob.Kind.FREE_DISK_SPACE,
                                    payload={"required_bytes": 1024, "reason": "test"})
    taken = call("get", "/api/v1/agent/jobs/", token).json()["jobs"]
    assert [(j["id"], j["kind"], j["required_bytes"]) for j in taken] == [(job.pk, "free_disk_space", 1024)]
    assert call("get", "/api/v1/agent/jobs/", token).json()["jobs"] == []
    other_agent, other_token = issue("agent-2")
    assert call("post", f"/api/v1/agent/jobs/{job.pk}/", other_token, {"ok": True}).status_code == 404
    done = call("post", f"/api/v1/agent/jobs/{job.pk}/", token, {"ok": True, "result": {"met": True}})
    assert done.status_code == 200
    job.refresh_from_db()
    assert (job.status, job.result) == (AgentJob.Status.DONE, {"met": True})


def test_a_login_job_carries_a_new_build_token(call, configuration):
    agent, token = issue()
    build = services.build_start(configuration=configuration, agent=agent, started_by=Build.StartedBy.API)
    agent_services.job_create(agent=agent, kind=AgentJob.Kind.LOGIN, build=build)
    [job] = call("get", "/api/v1/agent/jobs/", token).json()["jobs"]
    assert job["build"]["id"] == build.pk and job["token"].startswith("dsb_")
    credentials = call("get", f"/api/v1/agent/builds/{build.pk}/credentials/", job["token"])
    assert credentials.status_code == 200 and credentials.json()["logins"][0]["password"] == "registry-secret-19"


@pytest.mark.django_db(transaction=True)
def test_a_waiting_job_poll_answers_as_soon_as_a_job_is_made(call):
    agent, token = issue()

    def make_job():
        from django.db import connection

        time.sleep(0.5)
        try:
            agent_services.job_create(agent=Agent.objects.get(pk=agent.pk), kind=AgentJob.Kind.FREE_DISK_SPACE,
                                      payload={"required_bytes": 1})
        finally:
            connection.close()  # this thread's own connection

    maker = threading.Thread(target=make_job)
    began = time.monotonic()
    maker.start()
    jobs = call("get", "/api/v1/agent/jobs/?wait=20", token).json()["jobs"]
    maker.join()
    assert len(jobs) == 1
    assert time.monotonic() - began < 15  # well before the wait ran out (a generous bound, not a timing)


def test_agents_silent_past_the_timeout_have_their_running_builds_lost(configuration, settings):
    agent, _ = issue()
    AgentFactory(last_seen_at=timezone.now())  # another agent was heard from: the server was up
    build = services.build_start(configuration=configuration, agent=agent)
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now() - timezone.timedelta(seconds=3600))
    lost = agent_services.agents_silent_mark_lost()
    assert [b.pk for b in lost] == [build.pk]
    build.refresh_from_db()
    assert build.status == Build.Status.LOST and "silent" in build.error


HUGE = 10 ** 30


@pytest.mark.parametrize("url, data", [
    ("/api/v1/agent/heartbeat/", {"daemon": {"ok": True}, "running_builds": [HUGE]}),
    ("/api/v1/agent/heartbeat/", {"daemon": {"ok": True}, "running_builds": [], "free_bytes": HUGE}),
    ("/api/v1/agent/events/", {"first_seq": 1, "last_seq": HUGE, "records": []}),
    ("/api/v1/agent/events/", {"first_seq": 1, "last_seq": 1, "records": [record([HUGE], time.time_ns())]}),
    ("/api/v1/agent/cleanups/", {"reason": "r", "data_path": "/", "required_bytes": HUGE, "free_before": 1,
                                 "free_after": 1, "removed": [], "met": True}),
    ("/api/v1/agent/cleanups/", {"reason": "r", "data_path": "/", "required_bytes": 1, "free_before": 1,
                                 "free_after": 1, "removed": [{"references": 5}], "met": True}),
    ("/api/v1/agent/builds/", {"configuration": "app", "number": HUGE}),
])
def test_numbers_beyond_what_the_database_holds_are_a_400(call, configuration, url, data):
    _, token = issue()
    response = call("post", url, token, data)
    assert response.status_code == 400, response.content


def test_a_job_id_beyond_what_the_database_holds_is_a_404(call):
    _, token = issue()
    assert call("post", f"/api/v1/agent/jobs/{HUGE}/", token, {"ok": True}).status_code == 404


def test_a_job_poll_of_an_earlier_run_of_the_agent_takes_nothing(call):
    agent, token = issue()
    first = call("post", "/api/v1/agent/connect/", token, hello()).json()["session"]
    second = call("post", "/api/v1/agent/connect/", token, hello()).json()["session"]  # the agent restarted
    assert second == first + 1
    agent_services.job_create(agent=agent, kind=AgentJob.Kind.FREE_DISK_SPACE, payload={"required_bytes": 1})
    assert call("get", f"/api/v1/agent/jobs/?session={first}", token).json()["jobs"] == []
    assert len(call("get", f"/api/v1/agent/jobs/?session={second}", token).json()["jobs"]) == 1


def test_a_batch_sent_again_with_more_records_is_acknowledged_only_as_far_as_the_server_holds_it(call,
                                                                                                 configuration):
    _, token = issue()
    build = start(call, token).json()["build"]["id"]
    nano = time.time_ns()
    records = [record([build], nano + i, tag=str(i)) for i in range(5)]
    first = call("post", "/api/v1/agent/events/", token, {"first_seq": 100, "last_seq": 101, "records": records[:2]})
    assert first.json() == {"acked": 101}
    # The agent lost that answer and, restarted, sends what it has from 100 on: the server holds 100-101 only.
    again = call("post", "/api/v1/agent/events/", token, {"first_seq": 100, "last_seq": 104, "records": records})
    assert again.json() == {"acked": 101}
    rest = call("post", "/api/v1/agent/events/", token, {"first_seq": 102, "last_seq": 104, "records": records[2:]})
    assert rest.json() == {"acked": 104}
    assert DockerOperation.objects.filter(build_id=build).count() == 5


def test_nul_characters_in_event_attributes_are_dropped_not_the_batch(call, configuration):
    _, token = issue()
    build = start(call, token).json()["build"]["id"]
    hostile = {**record([build], time.time_ns()), "attributes": {"x": "a\x00b", "k\x00": ["c\x00"]}}
    response = call("post", "/api/v1/agent/events/", token, {"first_seq": 1, "last_seq": 1, "records": [hostile]})
    assert response.status_code == 200
    assert DockerOperation.objects.get(build_id=build).attributes == {"x": "ab", "k": ["c"]}


def test_a_build_lost_while_its_agent_seemed_silent_goes_on_at_its_next_heartbeat(call, configuration):
    agent, token = issue()
    other, _ = issue("agent-2")
    running = start(call, token).json()
    long_ago = timezone.now() - timezone.timedelta(hours=1)
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=long_ago)
    Agent.objects.filter(pk=other.pk).update(last_seen_at=timezone.now())  # the server was up: agent-1 was silent
    assert [b.pk for b in agent_services.agents_silent_mark_lost()] == [running["build"]["id"]]
    beat = call("post", "/api/v1/agent/heartbeat/", token,
                {"daemon": {"ok": True}, "running_builds": [running["build"]["id"]]})
    assert beat.json()["ended_builds"] == []
    assert Build.objects.get(pk=running["build"]["id"]).status == Build.Status.RUNNING
    finished = call("post", f"/api/v1/agent/builds/{running['build']['id']}/finish/", running["token"],
                    {"exit_code": 0})
    assert finished.json()["status"] == "succeeded"  # its token still opens it


def test_when_no_agent_was_heard_from_the_server_was_away_and_nothing_is_lost(configuration):
    agent, _ = issue()
    build = services.build_start(configuration=configuration, agent=agent)
    Agent.objects.update(last_seen_at=timezone.now() - timezone.timedelta(hours=1))
    assert agent_services.agents_silent_mark_lost() == []
    assert Build.objects.get(pk=build.pk).is_running


def test_a_run_build_build_its_agent_does_not_know_is_lost_after_a_while(call, configuration):
    agent, token = issue()
    unknown = start(call, token).json()["build"]["id"]
    fresh = start(call, token).json()["build"]["id"]
    Build.objects.filter(pk=unknown).update(started_at=timezone.now() - timezone.timedelta(minutes=10))
    call("post", "/api/v1/agent/heartbeat/", token, {"daemon": {"ok": True}, "running_builds": []})
    assert Build.objects.get(pk=unknown).status == Build.Status.LOST
    assert Build.objects.get(pk=fresh).is_running  # just started: its agent may not have it in its book yet


def test_finishing_an_api_build_again_reuses_its_waiting_logout(configuration):
    agent, _ = issue()
    build = services.build_start(configuration=configuration, agent=agent, started_by=Build.StartedBy.API)
    first = services.build_finish_api(build=build, exit_code=0)
    assert services.build_finish_api(build=build, exit_code=0) == first
    assert AgentJob.objects.filter(kind=AgentJob.Kind.LOGOUT).count() == 1


def test_an_agent_whose_projects_were_all_deleted_serves_none_not_every_project(call, configuration):
    """A project's admin may delete it; its dedicated agent must not become a shared one."""
    agent, token = issue()
    gone = ProjectFactory(ident="gone")
    agent.projects_assign([gone])
    gone.delete()
    agent.refresh_from_db()
    assert not agent.shared and not agent.serves(configuration.project)
    response = start(call, token)
    assert response.status_code == 400
    assert "does not run builds of project" in response.json()["configuration"][0]
    agent.projects_assign([])  # made shared on purpose (admin, settings file): every project
    assert agent.serves(configuration.project)
