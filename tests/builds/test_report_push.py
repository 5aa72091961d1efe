"""report_push on the server: the build's report token, the API and the agent's relay, the registry's word, the
refusals that record nothing, Docker Info, and what clean-up makes of a reported push.

Against the harness's real registry (pushes straight through its HTTP API, as kaniko or buildah do); the agent's
side and the command run for real in tests/e2e/test_report_push.py.
"""

import json
import time
import uuid
from datetime import timedelta

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from agent import protocol
from agent.report import main as report_main
from builds.agents import services as agent_services
from builds.cleanup.registry import (
    REPORTED_UNVERIFIED,
    TagProtection,
    build_delete,
    deletion_candidates,
    image_hold,
    pending_deletions_process,
    pushed_images_settle_owner,
)
from builds.models import Build, DockerOperation, PushedImage
from builds.reported import services as reported
from connections.registries import MANIFEST_TYPES
from tests.factories import (
    BuildConfigurationFactory,
    LoginConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
    api_token_for,
)
from tests.harness.http_push import push_image

pytestmark = pytest.mark.django_db


@pytest.fixture
def configuration(registry):
    project = ProjectFactory(ident="acme")
    configuration = BuildConfigurationFactory(ident="app", project=project, cleanup_pushed_images=True)
    LoginConnectionFactory(configuration=configuration, connection__project=project, connection__ident="local",
                           connection__registry=registry.address, connection__username=registry.username,
                           connection__password=registry.password)
    return configuration


def start(call, agent_token, configuration="app") -> protocol.BuildStarted:
    response = call("post", "/api/v1/agent/builds/", agent_token, {"configuration": configuration})
    assert response.status_code == 201, response.content
    return protocol.from_json(protocol.BuildStarted, response.json())


def pushed(registry, tag="1", repository=None) -> tuple[str, str, str]:
    """(reference, repository, digest) of an image pushed straight to the registry, no daemon in between."""
    repository = repository or f"team/app-{uuid.uuid4().hex[:8]}"
    digest = push_image(registry.url, repository, tag, auth=(registry.username, registry.password))
    return f"{registry.address}/{repository}:{tag}", repository, digest


def report(client, token, reference, digest=None):
    body = {"reference": reference, **({"digest": digest} if digest is not None else {})}
    return client.post("/api/v1/builds/pushes/", data=json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token}")


def manifest_status(registry, repository, reference):
    return requests.head(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES},
                         auth=(registry.username, registry.password), timeout=10).status_code


def nothing_recorded():
    return not PushedImage.objects.exists() and not DockerOperation.objects.exists()


# --- The token --------------------------------------------------------------------------------------

def test_a_build_started_by_its_agent_gets_a_report_token_of_its_own_stored_hashed(call, agent_token, configuration):
    started = start(call, agent_token)
    assert started.report_token.startswith("dsr_") and started.report_token != started.token
    build = Build.objects.get(pk=started.build.id)
    assert build.report_token_hash and started.report_token not in build.report_token_hash
    assert reported.report_authenticate(started.report_token) == build
    assert reported.report_authenticate(started.token) is None  # the agent's build token reports nothing


def test_the_report_token_opens_nothing_but_the_report(call, client, agent_token, configuration):
    started = start(call, agent_token)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {started.report_token}"}
    assert client.get(f"/api/v1/builds/{started.build.id}/", **headers).status_code == 401
    assert call("get", f"/api/v1/agent/builds/{started.build.id}/credentials/",
                started.report_token).status_code in (401, 403)
    assert call("post", f"/api/v1/agent/builds/{started.build.id}/finish/", started.report_token,
                {"exit_code": 0}).status_code in (401, 403)
    assert Build.objects.get(pk=started.build.id).is_running


# --- Through the API ----------------------------------------------------------------------------------

def test_a_report_records_the_registrys_digest_as_a_push_of_the_build(call, client, agent_token, configuration,
                                                                       registry, admin_user, admin_client):
    started = start(call, agent_token)
    reference, repository, digest = pushed(registry)
    response = report(client, started.report_token, reference)
    assert response.status_code == 201, response.content
    answer = response.json()
    assert (answer["build"], answer["registry"], answer["repository"], answer["tag"], answer["digest"]) == (
        started.build.id, registry.address, repository, "1", digest)
    assert answer["connection"] == "acme/local" and not answer["recorded_before"]
    image = PushedImage.objects.get()
    assert (image.build_id, image.reported, image.connection.ident) == (started.build.id, True, "local")
    assert image.verified_at is not None
    # A v2 registry keeps no times: the digest may have been there before the build, so its owner is uncertain
    assert image.owner_uncertain and image.owner_note == reported.REPORTED_UNDATED.format(registry=registry.address)
    operation = DockerOperation.objects.get()
    assert (operation.action, operation.reported, operation.tag, operation.digest) == ("push", True, "1", digest)
    assert started.report_token not in response.content.decode()

    # Docker Info counts it like any other push, marked reported.
    info = client.get(f"/api/v1/builds/{started.build.id}/docker-info/",
                      HTTP_AUTHORIZATION=f"Token {api_token_for(admin_user)}").json()
    assert info["summary"]["images_pushed"] == [reference] and info["summary"]["counts"] == {"push": 1}
    assert info["pushed_images"][0]["reported"] is True and info["operations"][0]["reported"] is True

    # The admin's Docker Info tab marks it, in the pushed images and in the operations.
    page = admin_client.get(reverse("admin:builds_build_docker_info", args=[started.build.id])).content.decode()
    for table in ("docker-info-pushed", "docker-info-operations"):
        assert 'ds-reported"' in page.split(f'id="{table}"')[1].split("</table>")[0], table

    # Reported again: recorded once.
    again = report(client, started.report_token, reference, digest=digest)
    assert again.status_code == 200 and again.json()["recorded_before"] is True
    assert PushedImage.objects.count() == 1 and DockerOperation.objects.count() == 1


def test_a_digest_reference_is_recorded_when_the_registry_holds_the_manifest(call, client, agent_token,
                                                                              configuration, registry):
    started = start(call, agent_token)
    _, repository, digest = pushed(registry)
    response = report(client, started.report_token, f"{registry.address}/{repository}@{digest}")
    assert response.status_code == 201, response.content
    assert PushedImage.objects.get().tag == "" and PushedImage.objects.get().digest == digest


def test_a_digest_report_asks_the_registry_for_that_manifest_alone_never_its_listing(
        call, client, agent_token, configuration, registry, monkeypatch):
    # A listing (every tag, a request each) inside the API call would let a build's reports of random digests tie
    # up the server and the registry.
    from connections.registries.v2_registry import V2Registry

    def listing(*args, **kwargs):
        raise AssertionError("the repository was listed")

    monkeypatch.setattr(V2Registry, "tags_by_digest", listing)
    started = start(call, agent_token)
    _, repository, digest = pushed(registry)
    absent = report(client, started.report_token, f"{registry.address}/{repository}@sha256:{'9' * 64}")
    assert absent.status_code == 400 and "has no sha256:9" in absent.json()["reference"][0]
    assert report(client, started.report_token, f"{registry.address}/{repository}@{digest}").status_code == 201


def test_another_projects_build_is_not_named_in_a_refusal(call, client, agent_token, configuration, registry):
    reference, repository, digest = pushed(registry)
    other = BuildConfigurationFactory(ident="secret-app")
    PushedImage.objects.create(project=other.project, configuration_ident="secret-app", build_number=7,
                               registry=registry.address, repository=repository, tag="1", digest=digest,
                               pushed_at=timezone.now() - timedelta(minutes=5))
    started = start(call, agent_token)
    response = report(client, started.report_token, reference)
    assert response.status_code == 409 and "was pushed before build app #1 started" in response.json()["digest"][0]
    assert "secret-app" not in response.content.decode()


@pytest.mark.parametrize("case", ["no login", "no tag", "no digest", "other digest", "bad reference",
                                  "bad digest", "no tag nor digest"])
def test_a_refused_report_says_why_and_records_nothing(call, client, agent_token, configuration, registry, case):
    started = start(call, agent_token)
    reference, repository, digest = pushed(registry)
    other = "sha256:" + "0" * 64
    arguments, status, words = {
        "no login": ((f"elsewhere.example.test:5000/{repository}:1",), 400,
                     "has no login connection for elsewhere.example.test:5000"),
        "no tag": ((f"{registry.address}/{repository}:2",), 400, "has no tag '2' in repository"),
        "no digest": ((f"{registry.address}/{repository}@{other}",), 400, f"has no {other}"),
        "other digest": ((reference, other), 400, f"holds {digest} for tag '1'"),
        "bad reference": ((f"{registry.address}/../x:1",), 400, "is not a repository name"),
        "bad digest": ((reference, "sha256:nope"), 400, "is not a digest"),
        "no tag nor digest": ((f"{registry.address}/{repository}",), 400, "give the tag that was pushed"),
    }[case]
    response = report(client, started.report_token, *arguments)
    assert response.status_code == status, response.content
    assert words in json.dumps(response.json())
    assert started.report_token not in response.content.decode()
    assert nothing_recorded()


def test_a_finished_builds_token_reports_nothing(call, client, agent_token, configuration, registry):
    started = start(call, agent_token)
    reference, _, _ = pushed(registry)
    finish = call("post", f"/api/v1/agent/builds/{started.build.id}/finish/", started.token, {"exit_code": 0})
    assert finish.status_code == 200
    response = report(client, started.report_token, reference)
    assert response.status_code == 401 and "its build has finished" in response.json()["detail"]
    assert started.report_token not in response.content.decode()
    assert nothing_recorded()


def test_a_token_reports_for_its_own_build_only(call, client, agent_token, configuration, registry):
    start(call, agent_token)
    second = start(call, agent_token)
    reference, _, _ = pushed(registry)
    assert report(client, second.report_token, reference).status_code == 201
    assert list(PushedImage.objects.values_list("build_id", flat=True)) == [second.build.id]


def test_no_other_token_opens_the_report(call, client, agent_token, configuration, registry, admin_user):
    started = start(call, agent_token)
    reference, _, _ = pushed(registry)
    for token in (started.token, agent_token, "dsr_" + "x" * 43):
        assert report(client, token, reference).status_code in (401, 403), token
    user = client.post("/api/v1/builds/pushes/", data=json.dumps({"reference": reference}),
                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {api_token_for(admin_user)}")
    assert user.status_code in (401, 403)
    assert nothing_recorded()


def test_a_digest_another_build_pushed_before_this_one_started_is_refused(call, client, agent_token, configuration,
                                                                          registry):
    earlier = start(call, agent_token)
    reference, repository, digest = pushed(registry)
    assert report(client, earlier.report_token, reference).status_code == 201
    # Somebody else's image, reported by a later build (to get it deleted with that build), under another tag too.
    PushedImage.objects.update(pushed_at=timezone.now() - timedelta(minutes=5))
    hostile = start(call, agent_token)
    for arguments in ((reference,), (f"{registry.address}/{repository}@{digest}",)):
        response = report(client, hostile.report_token, *arguments)
        assert response.status_code == 409, response.content
        assert "was pushed before build app #2 started (app #1" in response.json()["digest"][0]
    assert not PushedImage.objects.filter(build_id=hostile.build.id).exists()
    assert not DockerOperation.objects.filter(build_id=hostile.build.id).exists()


def test_a_digest_clean_up_deleted_before_the_build_started_may_be_reported_again(call, client, agent_token,
                                                                                  configuration, registry):
    earlier = start(call, agent_token)
    reference, _, _ = pushed(registry)
    assert report(client, earlier.report_token, reference).status_code == 201
    an_hour_ago = timezone.now() - timedelta(hours=1)
    PushedImage.objects.update(pushed_at=an_hour_ago - timedelta(hours=1), cleanup_status="deleted",
                               cleanup_updated_at=an_hour_ago)
    later = start(call, agent_token)  # the same content pushed anew (a reproducible build)
    assert report(client, later.report_token, reference).status_code == 201


def test_an_image_pushed_before_the_build_without_any_record_is_not_mistaken_for_another_builds(
        call, client, agent_token, configuration, registry):
    """A digest nobody recorded cannot be told from the build's own: the registry holds it, and the report stands
    (its deletion is bounded by the build's own login connection, see the clean-up tests)."""
    reference, _, _ = pushed(registry)
    started = start(call, agent_token)
    assert report(client, started.report_token, reference).status_code == 201


# --- Through the agent ----------------------------------------------------------------------------------

def agent_report(call, agent_token, token, reference, digest=""):
    return call("post", "/api/v1/agent/pushes/", agent_token, {"token": token, "reference": reference,
                                                                "digest": digest})


def test_the_agent_relays_a_report_of_its_own_build(call, agent_token, configuration, registry):
    started = start(call, agent_token)
    reference, _, digest = pushed(registry)
    response = agent_report(call, agent_token, started.report_token, reference, digest)
    assert response.status_code == 201, response.content
    recorded = protocol.from_json(protocol.PushRecorded, response.json())
    assert (recorded.build, recorded.digest, recorded.build_label) == (started.build.id, digest, "app #1")
    assert PushedImage.objects.get().reported


def test_another_agent_cannot_relay_a_builds_report(call, agent_token, configuration, registry):
    started = start(call, agent_token)
    _, other_agent, _ = agent_services.agent_token_issue(name="agent-2")
    reference, _, _ = pushed(registry)
    response = agent_report(call, other_agent, started.report_token, reference)
    assert response.status_code == 403 and "runs on another agent" in response.json()["detail"]
    assert nothing_recorded()


def test_the_agent_relay_refuses_an_ended_or_wrong_token_without_calling_its_own_token_revoked(
        call, agent_token, configuration, registry):
    started = start(call, agent_token)
    reference, _, _ = pushed(registry)
    call("post", f"/api/v1/agent/builds/{started.build.id}/finish/", started.token, {"exit_code": 0})
    for token in (started.report_token, started.token, "nonsense"):
        response = agent_report(call, agent_token, token, reference)
        assert response.status_code == 403 and "this build token is not valid" in response.json()["detail"]
        assert started.report_token not in response.content.decode()
    assert nothing_recorded()


# --- Clean-up --------------------------------------------------------------------------------------------

def test_a_reported_push_is_deleted_from_the_registry_with_its_build_once_its_owner_is_settled(
        call, client, agent_token, configuration, registry, admin_user):
    started = start(call, agent_token)
    reference, repository, digest = pushed(registry)
    assert report(client, started.report_token, reference).status_code == 201
    call("post", f"/api/v1/agent/builds/{started.build.id}/finish/", started.token, {"exit_code": 0})
    build_delete(Build.objects.get(pk=started.build.id))
    # The registry does not say it first had the digest during the build: kept until an admin settles it
    assert pending_deletions_process() == {"kept": 1}
    assert manifest_status(registry, repository, digest) == 200
    assert pushed_images_settle_owner(PushedImage.objects.all(), user=admin_user) == 1
    assert pending_deletions_process() == {"deleted": 1}
    assert manifest_status(registry, repository, digest) == 404


def test_a_reported_digest_another_running_build_pushed_stays_while_that_build_is_kept(
        call, client, agent_token, configuration, registry):
    hostile = start(call, agent_token)
    owner = start(call, agent_token)
    reference, repository, digest = pushed(registry)
    assert report(client, owner.report_token, reference).status_code == 201
    assert report(client, hostile.report_token, reference).status_code == 201  # pushed after it started
    call("post", f"/api/v1/agent/builds/{hostile.build.id}/finish/", hostile.token, {"exit_code": 0})
    build_delete(Build.objects.get(pk=hostile.build.id))
    PushedImage.objects.update(owner_uncertain=False)  # settled: what else holds the digest still counts
    assert pending_deletions_process() == {"kept": 1}
    image = PushedImage.objects.get(build__isnull=True)
    assert "build app #2, which is kept, pushed the same digest" in image.cleanup_reason
    assert manifest_status(registry, repository, digest) == 200


def test_a_reported_push_never_seen_in_its_registry_is_kept(registry):
    project = ProjectFactory()
    connection = RegistryConnectionFactory(project=project, registry=registry.address)
    image = PushedImage(project=project, configuration_ident="app", build_number=1, registry=registry.address,
                        repository="team/app", tag="1", digest="sha256:" + "1" * 64, pushed_at=timezone.now(),
                        reported=True, connection=connection, verified_at=None)
    assert image_hold(image, TagProtection()).reason == REPORTED_UNVERIFIED
    image.verified_at, image.connection = timezone.now(), None
    assert image_hold(image, TagProtection()).reason == REPORTED_UNVERIFIED
    image.connection = connection
    assert image_hold(image, TagProtection()) is None


def test_a_reported_push_is_deleted_only_with_the_login_connection_that_saw_it(registry):
    parent = ProjectFactory(ident="parent")
    project = ProjectFactory(ident="child", parent=parent)
    # The project's own connection for the registry, which may delete; the build logged in with its parent's.
    own = RegistryConnectionFactory(project=project, ident="deleter", registry=registry.address)
    build_login = RegistryConnectionFactory(project=parent, ident="pusher", registry=registry.address)
    usable = [own, build_login]
    image = PushedImage(project=project, configuration_ident="app", build_number=1, registry=registry.address,
                        repository="team/app", tag="1", digest="sha256:" + "1" * 64, pushed_at=timezone.now(),
                        reported=True, connection=build_login, verified_at=timezone.now())
    assert deletion_candidates(image, usable).connections == [build_login]
    image.reported = False  # a push the daemon saw falls back to the project's other connections
    assert deletion_candidates(image, usable).connections == [build_login, own]
    image.reported, image.connection = True, RegistryConnectionFactory(project=ProjectFactory(ident="elsewhere"),
                                                                      registry=registry.address)
    candidates = deletion_candidates(image, usable)
    assert candidates.connections == [] and "a reported push is deleted only with its build's login" in candidates.note


# --- The command's own refusals ----------------------------------------------------------------------------

def test_report_push_outside_a_build_says_so(capsys):
    assert report_main(["127.0.0.1:5000/app:1"], environ={}) == 1
    assert "report_push runs inside a build: DOCKERSUPPORT_BUILD_TOKEN is not set" in capsys.readouterr().err


def test_report_push_without_an_agent_names_the_socket(capsys, tmp_path):
    environ = {"DOCKERSUPPORT_BUILD_TOKEN": "dsr_secret-token-81", "DOCKERSUPPORT_AGENT_SOCKET": str(tmp_path / "no")}
    assert report_main(["127.0.0.1:5000/app:1"], environ=environ) == 1
    captured = capsys.readouterr()
    assert f"no agent answers at {tmp_path / 'no'}" in captured.err
    assert "dsr_secret-token-81" not in captured.out + captured.err


def test_report_push_sends_the_token_to_a_server_over_https_only(capsys):
    environ = {"DOCKERSUPPORT_BUILD_TOKEN": "dsr_secret-token-82"}
    assert report_main(["127.0.0.1:5000/app:1", "--server", "http://ci.example.com"], environ=environ) == 1
    captured = capsys.readouterr()
    assert "--server http://ci.example.com: give an https:// URL" in captured.err
    assert "dsr_secret-token-82" not in captured.out + captured.err


def test_report_push_usage(capsys):
    assert report_main([], environ={}) == 2
    assert report_main(["a:1", "b:2"], environ={}) == 2
    assert report_main(["a:1", "--digest"], environ={}) == 2
    assert "usage: manage.py report_push REFERENCE" in capsys.readouterr().err


# --- Amazon ECR (moto) -------------------------------------------------------------------------------------

def test_a_push_to_ecr_is_reported_by_tag_and_by_digest(call, client, agent_token, moto_server):
    from tests.factories import EcrConnectionFactory

    ecr = moto_server.boto3_client("ecr")
    repository = f"app-{uuid.uuid4().hex[:6]}"
    ecr.create_repository(repositoryName=repository)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": "sha256:" + "3" * 64, "size": 1,
                                      "mediaType": "application/vnd.docker.container.image.v1+json"},
                           "layers": [{"digest": f"sha256:{uuid.uuid4().hex * 2}", "size": 1,
                                       "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]})
    layer = json.loads(manifest)["layers"][0]["digest"]
    before = ecr.put_image(repositoryName=repository, imageManifest=manifest.replace(layer, f"sha256:{'4' * 64}"),
                           imageTag="old")["image"]["imageId"]["imageDigest"]  # moto's digests go by the layers
    project = ProjectFactory(ident="aws")
    connection = EcrConnectionFactory(project=project, ident="ecr", endpoint_url=moto_server.endpoint_url)
    configuration = BuildConfigurationFactory(ident="aws-app", project=project)
    LoginConnectionFactory(configuration=configuration, connection=connection)
    time.sleep(2.1)  # ECR (moto) says push times in whole seconds; one second of slack is allowed
    started = start(call, agent_token, configuration="aws-app")
    digest = ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="1")["image"]["imageId"][
        "imageDigest"]
    address = connection.registry_address
    # ECR says when it first had an image: one from before the build is not the build's to report
    earlier = report(client, started.report_token, f"{address}/{repository}:old")
    assert earlier.status_code == 409 and "before build aws-app #1 started" in earlier.json()["digest"][0], before
    by_tag = report(client, started.report_token, f"{address}/{repository}:1")
    assert by_tag.status_code == 201, by_tag.content
    assert (by_tag.json()["digest"], by_tag.json()["connection"]) == (digest, "aws/ecr")
    by_digest = report(client, started.report_token, f"{address}/{repository}@{digest}")
    assert by_digest.status_code == 201, by_digest.content
    missing = report(client, started.report_token, f"{address}/{repository}@sha256:{'9' * 64}")
    assert missing.status_code == 400 and "has no sha256:9" in missing.json()["reference"][0]
    assert set(PushedImage.objects.values_list("tag", "digest", "reported", "owner_uncertain")) == {
        ("1", digest, True, False), ("", digest, True, False)}  # ECR says it first had it during the build
