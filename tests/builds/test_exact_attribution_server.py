"""Issue 16 on the server: the configuration's exact attribution setting (admin, settings file, agent protocol),
the build's attribution from its login report (build page, API), the DOCKER_HOST an API-driven build is answered,
pushes the agent attributed by time, and Docker operations no build asked for (kept on the agent, on its page).

In process, through the agent protocol and the REST API (Django's test client); the agent's side runs for real in
tests/e2e.
"""

import json
import threading
import time
from datetime import datetime, timezone

import pytest
import yaml
from django.urls import reverse

from agent import protocol
from builds.agents import services as agent_services
from builds.api import build_started_payload
from builds.login import services as login
from builds.models import (
    UNATTRIBUTED_KEPT,
    Agent,
    AgentJob,
    Build,
    BuildConfiguration,
    DockerOperation,
    EventBatch,
    PushedImage,
    UnattributedOperation,
)
from builds.operations import ingestion
from builds.settings_file import SettingsFileError, apply_settings, export_settings, parse_settings
from tests.builds.test_ingestion import send
from tests.connections.test_admin_roles import page_data
from tests.factories import BuildConfigurationFactory, ProjectFactory, api_token_for

pytestmark = pytest.mark.django_db
T0 = 1_790_000_000_000_000_000
PROXY_SOCKET = "unix:///var/lib/dockersupport-agent/configs/app-1-x/docker.sock"


@pytest.fixture
def configuration():
    return BuildConfigurationFactory(ident="app", project=ProjectFactory(ident="acme"))


def start(call, token, configuration="app") -> dict:
    response = call("post", "/api/v1/agent/builds/", token, {"configuration": configuration})
    assert response.status_code == 201, response.content
    return response.json()


def record(builds, nano, action="push", image="registry.example.test:5000/team/app", tag="1", **more):
    return {"time_nano": nano, "event_type": "image", "action": action, "raw_action": action,
            "actor_id": f"{image}:{tag}", "image": image, "tag": tag, "digest": "", "container_id": "",
            "container_name": "", "exit_code": None, "attributes": {"name": image}, "builds": builds, **more}


def stray(nano, action="create", name="monitoring", **more):
    """A container event that no build's own Docker endpoint asked for, as the agent sends it."""
    return {"time_nano": nano, "event_type": "container", "action": action, "raw_action": action,
            "actor_id": "c" * 64, "image": "busybox", "tag": "latest", "digest": "", "container_id": "c" * 64,
            "container_name": name, "exit_code": None, "attributes": {"name": name, "label": "kept nowhere"},
            "builds": [], "unattributed": True, **more}


def kept_batch(agent_id, records, first_seq=1):
    """A batch as the server keeps it until ingestion."""
    return EventBatch.objects.create(agent_id=agent_id, first_seq=first_seq, last_seq=first_seq + len(records) - 1,
                                     records=len(records), data=records, received_at=datetime.now(timezone.utc))


# --- The configuration's setting ----------------------------------------------------------------------------

SETTINGS = """
projects:
  - id: acme
    build_configurations:
      - id: app
        docker_support: {exact_attribution: false}
      - id: web
"""


def test_the_settings_file_sets_exact_attribution_defaults_it_to_on_and_exports_it_back():
    apply_settings(parse_settings(SETTINGS, environ={}))
    assert dict(BuildConfiguration.objects.values_list("ident", "exact_attribution")) == {"app": False, "web": True}
    exported = export_settings()
    support = {c["id"]: c["docker_support"] for c in exported["projects"][0]["build_configurations"]}
    assert support["app"]["exact_attribution"] is False and support["web"]["exact_attribution"] is True
    BuildConfiguration.objects.update(exact_attribution=True)
    report = apply_settings(parse_settings(yaml.safe_dump(exported), environ={}))
    assert BuildConfiguration.objects.get(ident="app").exact_attribution is False
    assert report.updated["build configuration"] == 1 and export_settings() == exported


@pytest.mark.parametrize("value, kind", [('"false"', "a string"), ("0", "a number"), ("[]", "a list")])
def test_an_exact_attribution_that_is_no_boolean_is_an_error_naming_it(value, kind):
    text = SETTINGS.replace("{exact_attribution: false}", f"{{exact_attribution: {value}}}")
    with pytest.raises(SettingsFileError) as error:
        apply_settings(parse_settings(text, environ={}))
    assert error.value.errors == [f"projects[0].build_configurations[0].docker_support.exact_attribution: "
                                  f"expected true or false, got {kind}"]
    assert not BuildConfiguration.objects.exists()


def test_the_configuration_form_has_exact_attribution_in_docker_support_and_saves_it_off(admin_client, configuration):
    url = reverse("admin:builds_buildconfiguration_change", args=[configuration.pk])
    page = admin_client.get(url)
    [support] = [fieldset for fieldset in page.context["adminform"] if fieldset.name == "Docker Support"]
    assert "exact_attribution" in support.fields
    assert "Each build gets its own Docker endpoint (DOCKER_HOST" in page.content.decode()
    data = page_data(page)
    assert data.pop("exact_attribution") == "on"  # on by default
    assert admin_client.post(url, data).status_code == 302
    configuration.refresh_from_db()
    assert configuration.exact_attribution is False


# --- The agent protocol ------------------------------------------------------------------------------------

def test_the_new_protocol_fields_default_so_that_older_peers_still_talk():
    login_entry = {"connection": "acme/r", "registry": "r.example.test", "server": "r.example.test"}
    # An older server's answers: no exact_attribution, so exact, the default.
    started = protocol.from_json(protocol.BuildStarted, {"build": {"id": 1, "number": 1, "configuration": "app",
                                                                   "project": "acme"},
                                                         "token": "dsb_x", "logins": [login_entry]})
    assert started.exact_attribution is True
    assert protocol.from_json(protocol.Credentials, {"logins": []}).exact_attribution is True
    # An older agent's login report: no endpoint, no attribution.
    report = protocol.from_json(protocol.LoginReport, {"docker_config": "/c", "logged_in": [], "registries": [],
                                                       "warnings": []})
    assert (report.docker_host, report.attribution, report.attribution_note) == ("", "", "")
    # A newer peer's unknown keys are ignored; the fields travel as JSON.
    assert protocol.from_json(protocol.Credentials, {"logins": [], "exact_attribution": False, "later": 1}) \
        == protocol.Credentials(logins=[], exact_attribution=False)
    assert protocol.to_json(protocol.LoginReport(docker_config="/c", logged_in=[], registries=[], warnings=[],
                                                 docker_host=PROXY_SOCKET, attribution="exact"))["docker_host"] \
        == PROXY_SOCKET


@pytest.mark.parametrize("exact", [True, False])
def test_a_build_start_and_its_credentials_carry_the_configurations_setting(call, configuration, agent_token, exact):
    configuration.exact_attribution = exact
    configuration.save()
    started = start(call, agent_token)
    assert started["exact_attribution"] is exact
    build_id, token = started["build"]["id"], started["token"]
    credentials = call("get", f"/api/v1/agent/builds/{build_id}/credentials/", token)
    assert credentials.status_code == 200 and credentials.json()["exact_attribution"] is exact


def test_an_api_builds_login_job_credentials_carry_the_setting_off(call, configuration, agent_token):
    configuration.exact_attribution = False
    configuration.save()
    build, _ = login.build_start_api(configuration=configuration, agent=Agent.objects.get(name="agent-1"))
    [job] = call("get", "/api/v1/agent/jobs/", agent_token).json()["jobs"]
    credentials = call("get", f"/api/v1/agent/builds/{build.pk}/credentials/", job["token"]).json()
    assert credentials["exact_attribution"] is False


# --- The build's attribution ---------------------------------------------------------------------------------

def report(**more):
    return {"docker_config": "/var/lib/dockersupport-agent/configs/app-1-x", "logged_in": [], "registries": [],
            "warnings": [], **more}


def test_the_login_report_records_the_builds_attribution_shown_on_its_pages_and_in_the_api(
        call, configuration, agent_token, admin_client, admin_user):
    exact = start(call, agent_token)
    timed = start(call, agent_token)
    older = start(call, agent_token)
    for started, more in ((exact, {"attribution": "exact", "docker_host": PROXY_SOCKET}),
                          (timed, {"attribution": "time", "attribution_note": "its configuration turned it off",
                                   "docker_host": "unix:///var/run/docker.sock"}),
                          (older, {})):
        response = call("post", f"/api/v1/agent/builds/{started['build']['id']}/logins/", started["token"],
                        report(**more))
        assert response.status_code == 200, response.content
    builds = {b.pk: b for b in Build.objects.all()}
    assert (builds[exact["build"]["id"]].attribution, builds[exact["build"]["id"]].attribution_note) == ("exact", "")
    assert (builds[timed["build"]["id"]].attribution,
            builds[timed["build"]["id"]].attribution_note) == ("time", "its configuration turned it off")
    assert builds[older["build"]["id"]].attribution == ""

    page = admin_client.get(reverse("admin:builds_build_change", args=[exact["build"]["id"]])).content.decode()
    assert "<strong>Attribution:</strong> <span class=\"ds-wrap\">exact (its own Docker endpoint)</span>" in page
    page = admin_client.get(reverse("admin:builds_build_change", args=[timed["build"]["id"]])).content.decode()
    assert "time-based: its configuration turned it off" in page and "have an uncertain owner" in page
    page = admin_client.get(reverse("admin:builds_build_change", args=[older["build"]["id"]])).content.decode()
    assert "Attribution:" not in page  # an older agent said nothing: nothing is claimed
    tab = admin_client.get(reverse("admin:builds_build_docker_info", args=[timed["build"]["id"]])).content.decode()
    assert "Attribution: time-based: its configuration turned it off" in tab

    token = api_token_for(admin_user)
    shown = {b["id"]: b["attribution"] for b in admin_client.get(
        "/api/v1/builds/", HTTP_AUTHORIZATION=f"Token {token}").json()["results"]}
    assert shown == {exact["build"]["id"]: "exact", timed["build"]["id"]: "time", older["build"]["id"]: ""}


def test_a_login_report_carried_by_the_finish_records_the_attribution_and_an_unknown_one_is_not_stored(
        call, configuration, agent_token):
    started = start(call, agent_token)
    build_id, token = started["build"]["id"], started["token"]
    call("post", f"/api/v1/agent/builds/{build_id}/logins/", token, report(attribution="guessed"))
    assert Build.objects.get(pk=build_id).attribution == ""
    finish = call("post", f"/api/v1/agent/builds/{build_id}/finish/", token,
                  {"exit_code": 0, "logins": report(attribution="time", attribution_note="x" * 600)})
    assert finish.status_code == 200, finish.content
    build = Build.objects.get(pk=build_id)
    assert build.attribution == "time" and build.attribution_note == "x" * 500


def test_the_start_answer_gives_the_agents_docker_host_and_none_from_an_older_agent(configuration):
    build = Build(pk=7, number=3)
    result = {"docker_config": "/c", "logged_in": [], "warnings": []}
    assert build_started_payload(build, {**result, "docker_host": PROXY_SOCKET})["docker_host"] == PROXY_SOCKET
    assert build_started_payload(build, result)["docker_host"] == ""  # an older agent's result
    assert build_started_payload(build, {**result, "docker_host": None})["docker_host"] == ""


def _agent_logs_in_its_next_build(agent_pk: int, result: dict) -> threading.Thread:
    """An agent that takes its next login job, reports the login with its attribution, and answers `result`,
    through the services its API calls (the real agent is tests/e2e's)."""
    from django.db import connection

    def run():
        try:
            agent = Agent.objects.get(pk=agent_pk)
            for _ in range(400):
                jobs = agent_services.jobs_claim(agent=agent)
                if jobs:
                    build = Build.objects.get(pk=jobs[0].build.id)
                    login.build_login_report(build=build, report=protocol.LoginReport(
                        docker_config=result["docker_config"], logged_in=[], registries=[], warnings=[],
                        docker_host=result.get("docker_host", ""), attribution="exact"))
                    agent_services.job_complete(agent=agent, job_id=jobs[0].id,
                                                outcome=protocol.JobResult(ok=True, result=result))
                    return
                time.sleep(0.05)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("docker_host", [PROXY_SOCKET, None])
def test_an_api_build_is_answered_its_docker_host(client, admin_user, settings, docker_host):
    from django.utils import timezone as django_timezone

    settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT = 30
    BuildConfigurationFactory(ident="app")
    agent = Agent.objects.create(name="agent-1", last_seen_at=django_timezone.now())
    result = {"docker_config": "/var/lib/dockersupport-agent/configs/app-1-x", "logged_in": [], "warnings": []}
    if docker_host:
        result["docker_host"] = docker_host
    agent_thread = _agent_logs_in_its_next_build(agent.pk, result)
    response = client.post("/api/v1/builds/", data=json.dumps({"configuration": "app", "agent": "agent-1"}),
                           content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {api_token_for(admin_user)}")
    agent_thread.join()
    assert response.status_code == 201, response.content
    assert response.json()["docker_host"] == (docker_host or "")  # an older agent's answer has none
    assert Build.objects.get(pk=response.json()["id"]).attribution == "exact"
    schema = client.get("/api/v1/schema/?format=json", HTTP_AUTHORIZATION=f"Token {api_token_for(admin_user)}")
    started = schema.json()["components"]["schemas"]["BuildStarted"]["properties"]
    assert "Export it as DOCKER_HOST" in started["docker_host"]["description"]
    AgentJob.objects.all().delete()


# --- Pushes attributed by time --------------------------------------------------------------------------------

def test_a_push_the_agent_attributed_by_time_has_its_owner_uncertain_even_naming_one_build(call, configuration,
                                                                                          agent_token):
    build = start(call, agent_token)["build"]["id"]
    send(call, agent_token, [
        {**record([build], T0, tag="timed"), "digest": "sha256:" + "a" * 64, "owner_uncertain": True},
        {**record([build], T0 + 1, tag="exact"), "digest": "sha256:" + "b" * 64},
    ])
    images = {image.tag: image for image in PushedImage.objects.all()}
    assert images["timed"].owner_uncertain and images["timed"].owner_note == (
        "pushed while other builds ran on the same daemon, without their own Docker endpoint")
    assert not images["exact"].owner_uncertain and images["exact"].owner_note == ""
    assert DockerOperation.objects.filter(build_id=build, action="push").count() == 2


def test_a_record_flag_that_is_no_boolean_is_a_400_naming_it(call, configuration, agent_token):
    build = start(call, agent_token)["build"]["id"]
    for name in ("owner_uncertain", "unattributed"):
        response = call("post", "/api/v1/agent/events/", agent_token,
                        {"first_seq": 1, "last_seq": 1, "records": [{**record([build], T0), name: "yes"}]})
        assert response.status_code == 400
        assert response.json() == {"records": [f"records[0].{name}: expected true or false"]}


# --- Docker operations no build asked for --------------------------------------------------------------------

def test_an_operation_no_build_asked_for_is_kept_on_the_agent_without_its_attributes_once(call, configuration,
                                                                                        agent_token):
    send(call, agent_token, [stray(T0), stray(T0 + 5, action="die", exit_code=3)])
    send(call, agent_token, [stray(T0), stray(T0 + 5, action="die", exit_code=3)], first_seq=10)  # sent again
    kept = list(UnattributedOperation.objects.order_by("time_nano").values(
        "action", "image", "tag", "container_id", "container_name", "exit_code", "time_nano"))
    assert kept == [
        {"action": "create", "image": "busybox", "tag": "latest", "container_id": "c" * 64,
         "container_name": "monitoring", "exit_code": None, "time_nano": T0},
        {"action": "die", "image": "busybox", "tag": "latest", "container_id": "c" * 64,
         "container_name": "monitoring", "exit_code": 3, "time_nano": T0 + 5},
    ]
    assert "attributes" not in {f.name for f in UnattributedOperation._meta.get_fields()}
    assert not DockerOperation.objects.exists()


def test_only_records_naming_no_build_and_said_unattributed_are_kept_on_the_agent(call, configuration, agent_token):
    build = start(call, agent_token)["build"]["id"]
    send(call, agent_token, [
        {**stray(T0, name="named"), "builds": [build]},  # a build named: it is the build's
        {**stray(T0 + 1, name="unsaid"), "unattributed": False},  # an older agent's record naming no build
        {k: v for k, v in stray(T0 + 2, name="unsaid-too").items() if k != "unattributed"},
        stray(T0 + 3, name="stray"),
    ])
    assert list(UnattributedOperation.objects.values_list("container_name", flat=True)) == ["stray"]
    assert list(DockerOperation.objects.values_list("container_name", flat=True)) == ["named"]


def test_a_kept_batch_with_a_record_naming_no_build_but_another_agents_is_not_kept_for_this_agent(configuration):
    agent = Agent.objects.create(name="agent-9")
    other = Agent.objects.create(name="agent-8")
    build = login.build_start(configuration=configuration, agent=other)
    batch = kept_batch(agent.pk, [{**stray(T0), "builds": [build.pk]}, stray(T0 + 1, name="mine")])
    ingestion.batch_ingest(batch_id=batch.pk)
    assert list(UnattributedOperation.objects.values_list("agent__name", "container_name")) == [("agent-9", "mine")]
    assert not DockerOperation.objects.exists()


def test_only_the_newest_unattributed_operations_of_an_agent_are_kept(configuration):
    agent, other = Agent.objects.create(name="agent-9"), Agent.objects.create(name="agent-8")
    ingestion.batch_ingest(batch_id=kept_batch(other.pk, [stray(T0 - 1, name="other-agent")]).pk)
    first = [stray(T0 + i, name=f"c{i}") for i in range(UNATTRIBUTED_KEPT)]
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, first).pk)
    assert UnattributedOperation.objects.filter(agent=agent).count() == UNATTRIBUTED_KEPT
    # 5 newer ones push the 5 oldest out; an older one sent late never gets in.
    later = [stray(T0 + UNATTRIBUTED_KEPT + i, name=f"n{i}") for i in range(5)] + [stray(T0 - 100, name="late")]
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, later, first_seq=5000).pk)
    names = set(UnattributedOperation.objects.filter(agent=agent).values_list("container_name", flat=True))
    assert len(names) == UNATTRIBUTED_KEPT
    assert {f"n{i}" for i in range(5)} <= names and not {"c0", "c4", "late"} & names and "c5" in names
    assert UnattributedOperation.objects.filter(agent=other).count() == 1  # each agent its own


def test_an_unattributed_record_that_is_no_operation_is_set_aside(configuration):
    agent = Agent.objects.create(name="agent-9")
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, [stray(T0, action="explode"), stray(T0 + 1)]).pk)
    assert UnattributedOperation.objects.count() == 1
    assert agent.set_aside_records.get().error.startswith("not an operation: action")


def test_an_unattributed_record_too_long_for_its_columns_is_cut(configuration):
    agent = Agent.objects.create(name="agent-9")
    long_stray = stray(T0, name="n" * 300, raw_action="exec_start: " + "x" * 5000)
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, [long_stray]).pk)
    kept = UnattributedOperation.objects.get()
    assert (len(kept.container_name), len(kept.raw_action)) == (255, 100)


def test_the_agents_page_lists_the_operations_no_build_asked_for(admin_client, configuration):
    agent = Agent.objects.create(name="agent-9")
    url = reverse("admin:builds_agent_change", args=[agent.pk])
    assert "Docker operations no build asked for" in admin_client.get(url).content.decode()
    assert "None recorded." in admin_client.get(url).content.decode()
    records = [stray(T0 + i, name=f"container-{i}") for i in range(60)]
    records.append({**stray(T0 + 100, action="pull"), "container_id": "", "container_name": "",
                    "image": "registry.example.test/team/tool", "tag": "7"})
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, records).pk)
    page = admin_client.get(url).content.decode()
    assert "own Docker endpoint asked for while builds ran: something on the host used the daemon directly" in page
    assert "61 kept; the newest 50 shown" in page
    table = page[page.index('id="agent-unattributed"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 51  # the head and 50 rows, newest first
    assert table.index("registry.example.test/team/tool:7") < table.index("container-59")
    assert "container-11" in table and "container-10" not in table
    assert admin_client.get(reverse("admin:builds_agent_add")).status_code == 200


def test_the_unattributed_operations_go_with_their_agent(configuration):
    agent = Agent.objects.create(name="agent-9")
    ingestion.batch_ingest(batch_id=kept_batch(agent.pk, [stray(T0)]).pk)
    agent.delete()
    assert not UnattributedOperation.objects.exists()

