"""Ingestion of event batches (issue 14): no batch lost for one record, secrets out of exec command lines,
de-duplication by the event's full identity, uncertain owners and the login connection of pushed images.

In process, through the agent API (Django's test client) or straight from a kept batch; a real daemon's
events are in tests/e2e/test_ingestion_daemon.py.
"""

import base64
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection as db
from django.urls import reverse

from builds.agents import services as agent_services
from builds.models import (
    AgentImage,
    Build,
    DockerOperation,
    EventBatch,
    PushedImage,
    SetAsideRecord,
    operation_identity,
)
from builds.operations import ingestion
from builds.operations.records import RAW_ACTION_ATTRIBUTE
from builds.operations.selectors import docker_info_summary
from connections.models import Membership
from connections.registries import RegistryCredentials
from connections.registries.ecr import _cache_put, cache_key
from connections.roles import Role
from tests.factories import (
    BuildConfigurationFactory,
    EcrConnectionFactory,
    LoginConnectionFactory,
    ProjectFactory,
    api_token_for,
)

pytestmark = pytest.mark.django_db
SECRET = "registry-secret-19"
IMAGE_ID = "sha256:" + "a" * 64


@pytest.fixture
def configuration():
    configuration = BuildConfigurationFactory(ident="app", project=ProjectFactory(ident="acme"))
    LoginConnectionFactory(configuration=configuration, connection__password=SECRET,
                           connection__registry="registry.example.test:5000")
    return configuration


def start(call, token, configuration="app") -> int:
    response = call("post", "/api/v1/agent/builds/", token, {"configuration": configuration})
    assert response.status_code == 201, response.content
    return response.json()["build"]["id"]


def record(builds, nano, action="tag", image="team/app", tag="1", raw_action=None, actor_id=IMAGE_ID, **attributes):
    return {"time_nano": nano, "event_type": "container" if action in ("exec", "start") else "image",
            "action": action, "raw_action": raw_action or action, "actor_id": actor_id, "image": image, "tag": tag,
            "digest": "", "container_id": "", "container_name": "", "exit_code": None, "attributes": attributes,
            "builds": builds}


def send(call, token, records, first_seq=1):
    response = call("post", "/api/v1/agent/events/", token,
                    {"first_seq": first_seq, "last_seq": first_seq + len(records) - 1, "records": records})
    assert response.status_code == 200, response.content
    return response


def kept_batch(agent_id, records, first_seq=1):
    """A batch as the server keeps it until ingestion (one an older server or agent may have left)."""
    return EventBatch.objects.create(agent_id=agent_id, first_seq=first_seq, last_seq=first_seq + len(records),
                                     records=len(records), data=records, received_at=datetime.now(timezone.utc))


# --- 5. Ingestion never loses a batch ---------------------------------------------------------------------

def test_a_10_kb_exec_command_is_stored_cut_and_without_the_builds_secrets(call, configuration, agent_token):
    build = start(call, agent_token)
    auth = base64.b64encode(f"ci:{SECRET}".encode()).decode()
    # The password straddles the column's 100th character, and comes again later, also as config.json's `auth`.
    command = "exec_start: sh -c '" + "x" * 60 + f" --password {SECRET} --auth {auth} " + "y" * 10_000 + f" {SECRET}'"
    exec_record = {**record([build], time.time_ns(), action="exec", raw_action=command, actor_id="c" * 64,
                            image="busybox", tag="", execID="e" * 64),
                   "container_id": "c" * 64}
    send(call, agent_token, [exec_record, record([build], time.time_ns() + 5)])
    assert DockerOperation.objects.filter(build_id=build).count() == 2  # the batch is whole
    operation = DockerOperation.objects.get(build_id=build, action="exec")
    kept = operation.attributes[RAW_ACTION_ATTRIBUTE]
    assert len(operation.raw_action) == 100 and len(kept) == 1_000 and kept.endswith("…")
    assert kept.startswith("exec_start: sh -c 'xxx") and "--password *** --auth *** " in kept
    stored = json.dumps([operation.raw_action, operation.attributes])
    for part in (SECRET, SECRET[:8], auth):
        assert part not in stored
    assert operation.raw_action.endswith("--password *** --aut")  # cut where the secret was, after masking it


def test_a_secret_in_an_event_of_another_build_on_the_same_daemon_is_masked_for_both(call, configuration, agent_token):
    other = BuildConfigurationFactory(ident="other", project=ProjectFactory(ident="elsewhere"))
    LoginConnectionFactory(configuration=other, connection__password="other-secret-7")
    mine, theirs = start(call, agent_token), start(call, agent_token, "other")
    command = f"exec_start: login -p other-secret-7 -p {SECRET}"
    send(call, agent_token, [record([mine, theirs], time.time_ns(), action="exec", raw_action=command)])
    assert set(DockerOperation.objects.values_list("raw_action", flat=True)) == {"exec_start: login -p *** -p ***"}


def test_a_cached_ecr_token_of_the_build_is_masked(configuration):
    cache.clear()
    ecr = EcrConnectionFactory(project=configuration.project)
    LoginConnectionFactory(configuration=configuration, connection=ecr)
    _cache_put(cache_key(ecr), RegistryCredentials(server="x", username="AWS", password="ecr-token-4f1d",
                                                   expires_at=datetime.now(timezone.utc) + timedelta(hours=12)))
    try:
        build = Build.objects.create(configuration=configuration, agent=agent_services.agent_token_issue(
            name="agent-ecr")[0], number=1, started_at=datetime.now(timezone.utc))
        batch = kept_batch(build.agent_id, [record([build.pk], time.time_ns(), action="exec",
                                                   raw_action="exec_start: docker login -p ecr-token-4f1d x")])
        ingestion.batch_ingest(batch_id=batch.pk)
    finally:
        cache.clear()
    assert DockerOperation.objects.get(build=build).raw_action == "exec_start: docker login -p *** x"


def test_texts_longer_than_their_columns_in_a_kept_batch_are_cut_not_a_lost_batch(configuration):
    """A batch an older server kept (before the API cut anything) goes through ingestion alone."""
    agent = agent_services.agent_token_issue(name="agent-old")[0]
    build = Build.objects.create(configuration=configuration, agent=agent, number=1,
                                 started_at=datetime.now(timezone.utc))
    nano = time.time_ns()
    long = {**record([build.pk], nano, image="team/" + "a" * 600, tag="t" * 200), "container_name": "n" * 300,
            "actor_id": "x" * 300, "raw_action": "tag" + " " * 200}
    push = {**record([build.pk], nano + 1, action="push", image="127.0.0.1:5000/" + "r" * 600, tag="1"),
            "digest": "sha256:" + "d" * 64}
    batch = kept_batch(agent.pk, [long, push, record([build.pk], nano + 2)])
    assert ingestion.batch_ingest(batch_id=batch.pk) == 3
    operation = DockerOperation.objects.get(build=build, time_nano=nano)
    assert (len(operation.image), len(operation.tag), len(operation.container_name)) == (500, 128, 255)
    # A repository name cut would name another repository, which clean-up would delete: none is recorded.
    assert not PushedImage.objects.exists()
    [aside] = SetAsideRecord.objects.all()
    assert "not as a pushed image" in aside.error and aside.record["action"] == "push"


def test_lone_surrogates_are_replaced_not_a_refused_batch(call, configuration, agent_token):
    """JSON may carry them; PostgreSQL refuses them in any text (and json.dumps writes them as escapes)."""
    build = start(call, agent_token)
    odd = {**record([build], time.time_ns(), image="odd/a\ud800b"), "attributes": {"label\udfff": "x\ud800"}}
    send(call, agent_token, [odd, record([build], time.time_ns() + 1)])
    operation = DockerOperation.objects.get(build_id=build, image__startswith="odd/")
    assert operation.image == "odd/a?b" and operation.attributes == {"label?": "x?"}
    assert DockerOperation.objects.filter(build_id=build).count() == 2


def test_a_push_whose_name_held_a_secret_is_no_pushed_image_nor_a_tracked_one(call, configuration, agent_token):
    """Masked, the name is another one (or none): clean-up must never act on it."""
    build = start(call, agent_token)
    push = {**record([build], time.time_ns(), action="push", image=f"registry.example.test:5000/{SECRET}/app"),
            "digest": "sha256:" + "3" * 64}
    send(call, agent_token, [push])
    assert DockerOperation.objects.get(build_id=build).image == "registry.example.test:5000/***/app"
    assert not PushedImage.objects.exists() and not AgentImage.objects.exists()
    [aside] = SetAsideRecord.objects.all()
    assert "not as a pushed image" in aside.error and SECRET not in json.dumps(aside.record)


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_of_its_batch_stored(call, configuration,
                                                                                     agent_token):
    with db.cursor() as cursor:  # the database itself refuses one image name: any refusal, whatever its cause
        if db.vendor == "postgresql":
            cursor.execute("CREATE FUNCTION refuse_test_image() RETURNS trigger AS $$ BEGIN"
                           " IF NEW.image = 'refused/here' THEN RAISE EXCEPTION 'refused by the test''s trigger';"
                           " END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
            cursor.execute("CREATE TRIGGER refuse_test_image BEFORE INSERT ON builds_dockeroperation"
                           " FOR EACH ROW EXECUTE FUNCTION refuse_test_image()")
        else:
            cursor.execute("CREATE TRIGGER refuse_test_image BEFORE INSERT ON builds_dockeroperation"
                           " WHEN NEW.image = 'refused/here'"
                           " BEGIN SELECT RAISE(ABORT, 'refused by the test''s trigger'); END")
    build = start(call, agent_token)
    nano = time.time_ns()
    refused = record([build], nano + 1, image="refused/here", raw_action=f"tag {SECRET}")
    pushed = {**record([build], nano + 2, action="push", image="registry.example.test:5000/team/app", tag="7"),
              "digest": "sha256:" + "b" * 64}
    send(call, agent_token, [record([build], nano), refused, pushed], first_seq=41)
    assert sorted(DockerOperation.objects.filter(build_id=build).values_list("image", flat=True)) == [
        "registry.example.test:5000/team/app", "team/app"]
    assert PushedImage.objects.get(build_id=build).tag == "7"  # the rest of the batch, pushed images too
    assert EventBatch.objects.get().ingested_at is not None
    [aside] = SetAsideRecord.objects.all()
    assert aside.first_seq == 41 and aside.agent.name == "agent-1"
    assert "refused by the test's trigger" in aside.error
    assert aside.record["image"] == "refused/here" and aside.record["raw_action"] == "tag ***"


def test_an_exit_code_beyond_its_column_is_set_aside_on_postgresql(configuration):
    if db.vendor != "postgresql":
        pytest.skip("SQLite stores any 64-bit integer")
    agent = agent_services.agent_token_issue(name="agent-old")[0]
    build = Build.objects.create(configuration=configuration, agent=agent, number=1,
                                 started_at=datetime.now(timezone.utc))
    nano = time.time_ns()
    died = {**record([build.pk], nano, action="die", raw_action="die"), "exit_code": 2 ** 40}
    batch = kept_batch(agent.pk, [died, record([build.pk], nano + 1)])
    ingestion.batch_ingest(batch_id=batch.pk)
    assert list(DockerOperation.objects.values_list("action", flat=True)) == ["tag"]
    assert "out of range" in SetAsideRecord.objects.get().error


def test_set_aside_records_are_shown_to_superusers_only(admin_client, client, configuration):
    agent = agent_services.agent_token_issue(name="agent-old")[0]
    aside = SetAsideRecord.objects.create(agent=agent, first_seq=7, record={"raw_action": "tag ***"},
                                          error="refused by the database: value too long",
                                          at=datetime.now(timezone.utc))
    page = admin_client.get(reverse("admin:builds_setasiderecord_change", args=[aside.pk])).content.decode()
    assert "value too long" in page and "tag ***" in page
    assert "value too long" in admin_client.get(reverse("admin:builds_setasiderecord_changelist")).content.decode()
    member = User.objects.create_user("member", password="pw-member-1")
    Membership.objects.create(project=configuration.project, user=member, role=Role.ADMIN)
    client.force_login(member)
    assert client.get(reverse("admin:builds_setasiderecord_changelist")).status_code == 403


# --- 6. De-duplication by the event's full identity ---------------------------------------------------------

def test_two_tags_of_one_image_in_one_clock_tick_are_two_operations_and_a_replay_doubles_neither(
        call, configuration, agent_token):
    build = start(call, agent_token)
    nano = time.time_ns()
    tags = [record([build], nano, image="team/app", tag="1", name="team/app:1"),
            record([build], nano, image="team/app", tag="latest", name="team/app:latest")]
    send(call, agent_token, tags, first_seq=1)
    send(call, agent_token, tags, first_seq=3)  # the same events again, in a new batch (an agent restarted)
    assert sorted(DockerOperation.objects.filter(build_id=build).values_list("tag", flat=True)) == ["1", "latest"]


def test_a_replayed_push_without_its_digest_is_the_same_operation(call, configuration, agent_token):
    """The agent asks the daemon for a push's digest afterwards: a replay once the image is gone has none."""
    build = start(call, agent_token)
    push = {**record([build], time.time_ns(), action="push", image="registry.example.test:5000/team/app"),
            "digest": "sha256:" + "c" * 64}
    send(call, agent_token, [push], first_seq=1)
    send(call, agent_token, [{**push, "digest": ""}], first_seq=2)
    assert DockerOperation.objects.filter(build_id=build).count() == 1


def test_an_operations_identity_is_that_of_its_stored_fields(call, configuration, agent_token):
    build = start(call, agent_token)
    send(call, agent_token, [record([build], time.time_ns(), action="exec", raw_action=f"exec_start: {SECRET}")])
    operation = DockerOperation.objects.get()
    fields = {name: getattr(operation, name) for name in ("time_nano", "event_type", "action", "raw_action",
                                                          "actor_id", "image", "tag", "digest", "container_id",
                                                          "container_name", "exit_code", "attributes")}
    assert operation.identity == operation_identity(fields) and len(operation.identity) == 64


# --- 2/1. Uncertain owners and the login connection ----------------------------------------------------------

def test_a_push_given_to_two_builds_is_recorded_on_each_with_its_owner_uncertain(call, configuration, agent_token,
                                                                                  admin_client, admin_user):
    other = BuildConfigurationFactory(ident="other", project=ProjectFactory(ident="elsewhere"))
    first, second = start(call, agent_token), start(call, agent_token)
    third = start(call, agent_token, "other")
    push = {**record([first, second, third], time.time_ns(), action="push",
                     image="registry.example.test:5000/team/app", tag="9"), "digest": "sha256:" + "e" * 64}
    alone = {**record([first], time.time_ns() + 1, action="push", image="registry.example.test:5000/team/solo"),
             "digest": "sha256:" + "f" * 64}
    send(call, agent_token, [push, alone])
    images = {image.build_id: image for image in PushedImage.objects.filter(repository="team/app")}
    assert set(images) == {first, second, third} and all(i.owner_uncertain for i in images.values())
    third_id = Build.objects.get(pk=third).pk
    # Builds of another project are named by id only: the note is shown to this project's members.
    assert images[first].owner_note == (f"pushed while builds app #1, app #2 and build {third_id} of another project "
                                        "ran on the same daemon")
    assert images[third].owner_note.startswith(f"pushed while builds build {first} of another project")
    assert not PushedImage.objects.get(repository="team/solo").owner_uncertain
    assert other.builds.get().pushed_images.get().owner_uncertain
    warning = [w for w in docker_info_summary(Build.objects.get(pk=first))["warnings"] if "owner uncertain" in w]
    assert warning == [f"registry.example.test:5000/team/app:9: owner uncertain, {images[first].owner_note}; "
                       "clean-up never deletes it until an admin settles its owner"]
    page = admin_client.get(reverse("admin:builds_build_docker_info", args=[first])).content.decode()
    assert "Owner uncertain:" in page and "ran on the same daemon" in page
    api = admin_client.get(f"/api/v1/builds/{first}/docker-info/",
                           HTTP_AUTHORIZATION=f"Token {api_token_for(admin_user)}").json()
    shown = {(i["repository"], i["owner_uncertain"], bool(i["owner_note"])) for i in api["pushed_images"]}
    assert shown == {("team/app", True, True), ("team/solo", False, False)}


@pytest.mark.parametrize("login_address, pushed", [
    ("registry.example.test:5000", "registry.example.test:5000/team/app"),
    ("https://Registry.Example.test:5000/", "registry.example.test:5000/team/app"),
    ("", "team/app"), ("index.docker.io", "team/app"), ("docker.io", "index.docker.io/team/app"),
    ("registry-1.docker.io", "registry.hub.docker.com/team/app"),
])
def test_a_pushed_image_records_the_login_connection_of_its_registry(call, agent_token, login_address, pushed):
    configuration = BuildConfigurationFactory(ident="app")
    unrelated = LoginConnectionFactory(configuration=configuration, connection__registry="elsewhere.example.test")
    login = LoginConnectionFactory(configuration=configuration, connection__registry=login_address)
    build = start(call, agent_token)
    send(call, agent_token, [{**record([build], time.time_ns(), action="push", image=pushed, tag="2"),
                              "digest": "sha256:" + "1" * 64}])
    image = PushedImage.objects.get()
    assert image.connection_id == login.connection_id != unrelated.connection_id


def test_a_push_to_a_registry_the_build_did_not_log_in_to_records_no_connection(call, configuration, agent_token):
    build = start(call, agent_token)
    send(call, agent_token, [{**record([build], time.time_ns(), action="push", image="ghcr.io/team/app"),
                              "digest": "sha256:" + "2" * 64}])
    assert PushedImage.objects.get().connection is None
