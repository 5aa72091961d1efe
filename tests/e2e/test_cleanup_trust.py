"""Registry clean-up you can trust: the right connection, never an uncertain or protected image, the registry
read again right before deleting — on the real registry (Debian's docker-registry), moto's ECR and PostgreSQL.

The read-only account's refusal is real: the registry has two htpasswd accounts, and a stand-in in front of
it passes every request through as it is, except a DELETE by the read-only account, which it answers as a
registry that does not allow it (401 or 403). Images are pushed by the real daemon to the registry itself;
the connections and the images' rows name the stand-in's address, so everything our code sends goes through
it and is recorded.
"""

import base64
import json
import os
import secrets
import uuid
from datetime import timedelta

import pytest
import requests
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from builds.cleanup.registry import pending_deletions_process
from builds.models import Build, CleanupRun, PushedImage
from connections.models import Membership
from tests.e2e.test_server_cleanup import manifest_status, push_unique, retag
from tests.factories import (
    BuildConfigurationFactory,
    BuildFactory,
    EcrConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)
from tests.harness import Registry
from tests.harness.stand_in import Answer, StandIn

pytestmark = [pytest.mark.e2e]
PASSED_BACK = ("Docker-Content-Digest", "Content-Type", "WWW-Authenticate", "Link", "Docker-Distribution-Api-Version",
               "Location")


class TwoAccountRegistry(Registry):
    """The harness's registry with a second htpasswd account, `reader` (the registry itself lets it delete)."""

    reader = "reader"

    def __init__(self):
        super().__init__()
        self.reader_password = secrets.token_urlsafe(16)

    def _prepare(self):
        import bcrypt

        super()._prepare()
        hashed = bcrypt.hashpw(self.reader_password.encode(), bcrypt.gensalt(rounds=5)).decode()
        with open(os.path.join(self.root, "htpasswd"), "a") as f:
            f.write(f"{self.reader}:{hashed}\n")


class ReadOnlyFront:
    """A stand-in in front of `backing` that refuses the reader's DELETEs with `refusal` and passes the rest."""

    def __init__(self, backing: TwoAccountRegistry, host="127.0.0.2"):
        self.backing, self.refusal = backing, 403
        self.reader_auth = "Basic " + base64.b64encode(f"{backing.reader}:{backing.reader_password}".encode()).decode()
        self.http = requests.Session()
        self.stand_in = StandIn(host, self._answer)

    @property
    def address(self):
        return self.stand_in.address

    def log(self):
        return self.stand_in.requests

    def _answer(self, recorded) -> Answer:
        auth = recorded.headers.get("Authorization", "")
        if recorded.method == "DELETE" and auth == self.reader_auth:
            body = {"errors": [{"code": "DENIED" if self.refusal == 403 else "UNAUTHORIZED",
                                "message": "the read-only account may not delete"}]}
            headers = {"Content-Type": "application/json"}
            if self.refusal == 401:
                headers["WWW-Authenticate"] = 'Basic realm="dockersupport-test"'
            return Answer(self.refusal, headers, json.dumps(body).encode())
        headers = {name: value for name, value in recorded.headers.items() if name in ("Authorization", "Accept")}
        response = self.http.request(recorded.method, self.backing.url + recorded.path, headers=headers,
                                     allow_redirects=False, timeout=30)
        passed = {name: response.headers[name] for name in PASSED_BACK if name in response.headers}
        return Answer(response.status_code, passed, response.content)


@pytest.fixture(scope="module")
def backing():
    from tests.conftest import start

    registry = start(TwoAccountRegistry())
    yield registry
    registry.stop()


@pytest.fixture
def front(backing):
    proxy = ReadOnlyFront(backing)
    proxy.stand_in.start()
    yield proxy
    proxy.stand_in.stop()


def connection_to(front, project, ident, *, reader: bool):
    backing = front.backing
    return RegistryConnectionFactory(
        project=project, ident=ident, registry=front.address,
        username=backing.reader if reader else backing.username,
        password=backing.reader_password if reader else backing.password)


def pending(project, registry_address, repository, tag, digest, **fields):
    return PushedImage.objects.create(
        project=project, configuration_ident=fields.pop("configuration_ident", "gone"),
        build_number=fields.pop("build_number", 1), registry=registry_address, repository=repository, tag=tag,
        digest=digest, pushed_at=timezone.now(), cleanup_status=PushedImage.CleanupStatus.PENDING,
        next_attempt_at=timezone.now(), **fields)


def deletes(front, auth=None):
    return [r for r in front.log() if r.method == "DELETE" and (auth is None or r.headers.get("Authorization") == auth)]


def repo():
    return f"trust/{uuid.uuid4().hex[:8]}"


# --- The right connection ------------------------------------------------------------------------

@pytest.mark.parametrize("refusal", [401, 403])
def test_a_read_only_connection_refused_then_the_push_connection_deletes(front, docker_client, transactional_db,
                                                                         refusal):
    front.refusal = refusal
    project = ProjectFactory(ident="acme")
    connection_to(front, project, "pull", reader=True)  # nearest and first in the database's order
    connection_to(front, project, "push", reader=False)
    name = repo()
    digests = [push_unique(docker_client, front.backing, name, tag) for tag in ("1", "2")]
    images = [pending(project, front.address, name, tag, digest) for tag, digest in zip(("1", "2"), digests)]
    run = CleanupRun.objects.create(trigger="command", started_at=timezone.now())

    assert pending_deletions_process(run=run) == {"deleted": 2}
    assert [manifest_status(front.backing, name, d) for d in digests] == [404, 404]
    # Each image was offered to the read-only account first.
    assert {r.path for r in deletes(front, front.reader_auth)} == {f"/v2/{name}/manifests/{d}" for d in digests}
    for image in images:
        image.refresh_from_db()
        assert image.cleanup_status == "deleted"
        assert image.cleanup_reason.startswith(
            f"manifest deleted, with connection acme/push; refused before: connection acme/pull: deleting "
            f"{name}@{image.digest}: the registry refused the credentials: HTTP {refusal} ")
    entry = run.details[0]
    assert entry["connection"] == "acme/push" and entry["outcome"] == "deleted"
    assert [r["connection"] for r in entry["refused"]] == ["acme/pull"]
    assert f"HTTP {refusal}" in entry["refused"][0]["answer"]


def test_the_connection_the_build_logged_in_with_is_tried_first(front, docker_client, transactional_db):
    parent = ProjectFactory(ident="org")
    project = ProjectFactory(ident="team", parent=parent)
    connection_to(front, project, "pull", reader=True)  # nearer than the parent's: first without a recorded login
    push = connection_to(front, parent, "push", reader=False)
    name = repo()
    digest = push_unique(docker_client, front.backing, name, "1")
    image = pending(project, front.address, name, "1", digest, connection=push)

    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == "manifest deleted, with connection org/push"
    assert deletes(front, front.reader_auth) == []  # the read-only account was never asked
    assert manifest_status(front.backing, name, digest) == 404


def test_a_recorded_connection_the_project_may_not_use_is_never_used(front, docker_client, transactional_db):
    project = ProjectFactory(ident="team")
    stranger = ProjectFactory(ident="stranger")
    theirs = RegistryConnectionFactory(project=stranger, ident="push", registry=front.address,
                                       username=front.backing.username, password=front.backing.password)
    name = repo()
    digest = push_unique(docker_client, front.backing, name, "1")
    image = pending(project, front.address, name, "1", digest, connection=theirs)

    assert pending_deletions_process() == {"failed": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == (
        f"no connection for {front.address} in project 'team' or its ancestors; connection stranger/push (its "
        f"build's login) is not one of project 'team' or its ancestors for {front.address}, so it is not used")
    assert front.log() == []  # not a single request, with anyone's credentials
    assert manifest_status(front.backing, name, digest) == 200


def test_when_no_connection_may_delete_each_refusal_is_recorded_and_no_other_registry_is_asked(
        front, docker_client, transactional_db):
    parent = ProjectFactory(ident="org")
    project = ProjectFactory(ident="team", parent=parent)
    connection_to(front, project, "pull", reader=True)
    connection_to(front, parent, "pull", reader=True)
    with StandIn("127.0.0.3", lambda recorded: Answer(202)) as elsewhere:  # a registry that would delete anything
        RegistryConnectionFactory(project=project, ident="elsewhere", registry=elsewhere.address, username="ci",
                                  password="elsewhere-secret")
        name = repo()
        digest = push_unique(docker_client, front.backing, name, "1")
        image = pending(project, front.address, name, "1", digest)
        run = CleanupRun.objects.create(trigger="command", started_at=timezone.now())
        assert pending_deletions_process(run=run) == {"failed": 1}
        assert elsewhere.requests == []
    image.refresh_from_db()
    assert image.cleanup_reason.startswith("no connection may delete it: connection team/pull: ")
    assert "; connection org/pull: " in image.cleanup_reason and image.cleanup_reason.count("HTTP 403") == 2
    assert [r["connection"] for r in run.details[0]["refused"]] == ["team/pull", "org/pull"]
    assert manifest_status(front.backing, name, digest) == 200


def test_the_tags_are_read_once_per_repository_right_before_its_deletions(front, docker_client, transactional_db):
    project = ProjectFactory(ident="acme")
    push = connection_to(front, project, "push", reader=False)
    names = [repo(), repo()]
    for name in names:
        for tag in ("1", "2", "3"):
            pending(project, front.address, name, tag, push_unique(docker_client, front.backing, name, tag),
                    connection=push)

    assert pending_deletions_process() == {"deleted": 6}
    log = [(r.method, r.path) for r in front.log() if "Authorization" in r.headers]
    for name in names:
        reads = [i for i, (method, path) in enumerate(log) if path.startswith(f"/v2/{name}/tags/list")]
        removals = [i for i, (method, path) in enumerate(log) if method == "DELETE" and f"/v2/{name}/" in path]
        assert len(reads) == 1 and len(removals) == 3
        assert reads[0] < min(removals)


def test_a_tag_pushed_by_hand_after_the_plan_keeps_the_image(manage, front, docker_client, transactional_db):
    project = ProjectFactory(ident="acme")
    push = connection_to(front, project, "push", reader=False)
    configuration = BuildConfigurationFactory(project=project, ident="app", keep_last=1, cleanup_pushed_images=True)
    name = repo()
    old, new = [BuildFactory(configuration=configuration, number=n, status="succeeded",
                             started_at=timezone.now() - timedelta(hours=3 - n)) for n in (1, 2)]
    digest = push_unique(docker_client, front.backing, name, "1")
    PushedImage.objects.create(build=old, project=project, configuration_ident="app", build_number=1,
                               registry=front.address, repository=name, tag="1", digest=digest,
                               pushed_at=timezone.now(), connection=push)

    plan = manage("cleanup_builds", "--dry-run")
    assert f"delete {front.address}/{name}@{digest} from {front.address} with connection acme/push" in plan.stdout
    retag(front.backing, name, digest, "hotfix")  # by hand, after the plan
    result = manage("cleanup_builds")
    assert result.returncode == 0, result.stdout + result.stderr

    assert list(Build.objects.filter(configuration=configuration)) == [new]
    image = PushedImage.objects.get(repository=name)
    assert image.cleanup_status == "kept"
    assert "tag 'hotfix' also points to this digest and was not pushed by a deleted build" in image.cleanup_reason
    assert manifest_status(front.backing, name, digest) == 200 and manifest_status(front.backing, name, "hotfix") == 200


# --- Never what may not be ours ------------------------------------------------------------------

def test_an_image_of_uncertain_owner_is_kept_then_settled_by_a_project_admin_then_deleted(
        front, docker_client, transactional_db, client):
    project = ProjectFactory(ident="acme")
    connection_to(front, project, "push", reader=False)
    name = repo()
    digest = push_unique(docker_client, front.backing, name, "7")
    image = pending(project, front.address, name, "7", digest, owner_uncertain=True,
                    owner_note="pushed while builds app #7 and web #3 ran on agent-1")

    assert pending_deletions_process() == {"kept": 1}
    image.refresh_from_db()
    assert image.cleanup_status == "kept"
    assert image.cleanup_reason.startswith("owner uncertain: pushed while builds app #7 and web #3 ran on agent-1; "
                                           "never deleted automatically")
    assert front.log() == [] and manifest_status(front.backing, name, digest) == 200

    url = reverse("admin:builds_pushedimage_changelist")
    viewer, admin = (User.objects.create_user(n, password="pw-" + n) for n in ("vic", "alice"))
    Membership.objects.create(project=project, user=viewer, role=Membership.Role.VIEWER)
    Membership.objects.create(project=project, user=admin, role=Membership.Role.ADMIN)
    client.force_login(viewer)
    client.post(url, {"action": "settle_owner", "_selected_action": [image.pk]})
    image.refresh_from_db()
    assert image.owner_uncertain  # a viewer settles nothing
    client.force_login(admin)
    client.post(url, {"action": "settle_owner", "_selected_action": [image.pk]})
    image.refresh_from_db()
    assert not image.owner_uncertain and image.owner_note.startswith("settled by alice at ")
    assert image.cleanup_status == "pending"

    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert image.cleanup_status == "deleted" and manifest_status(front.backing, name, digest) == 404


def test_a_digest_an_uncertain_image_pushed_is_never_deleted_by_another_build(registry, docker_client,
                                                                              transactional_db):
    project = ProjectFactory(ident="acme")
    RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                              password=registry.password)
    name = repo()
    digest = push_unique(docker_client, registry, name, "mine")
    retag(registry, name, digest, "theirs")
    uncertain = pending(project, registry.address, name, "theirs", digest, owner_uncertain=True,
                        configuration_ident="web", build_number=3)
    certain = pending(project, registry.address, name, "mine", digest)

    assert pending_deletions_process() == {"kept": 2}
    certain.refresh_from_db()
    assert "an image whose owner is uncertain (web #3, tag 'theirs') has the same digest" in certain.cleanup_reason
    assert manifest_status(registry, name, digest) == 200
    # Its tag moved on since: the digest is still held by the row whose owner is uncertain.
    push_unique(docker_client, registry, name, "theirs")
    PushedImage.objects.filter(pk=certain.pk).update(cleanup_status="pending", next_attempt_at=timezone.now())
    assert pending_deletions_process() == {"kept": 1}
    assert manifest_status(registry, name, digest) == 200
    uncertain.refresh_from_db()
    assert uncertain.cleanup_status == "kept"


def test_a_kept_build_that_pushed_the_same_tag_and_digest_keeps_it_on_a_v2_registry(registry, docker_client,
                                                                                      transactional_db):
    project = ProjectFactory(ident="acme")
    RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                              password=registry.password)
    configuration = BuildConfigurationFactory(project=project, ident="app")
    kept = BuildFactory(configuration=configuration, number=9, status="succeeded")
    name = repo()
    digest = push_unique(docker_client, registry, name, "stable")
    PushedImage.objects.create(build=kept, project=project, configuration_ident="app", build_number=9,
                               registry=registry.address, repository=name, tag="stable", digest=digest,
                               pushed_at=timezone.now())
    image = pending(project, registry.address, name, "stable", digest, configuration_ident="app", build_number=8)

    assert pending_deletions_process() == {"kept": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == "build app #9, which is kept, pushed the same digest"
    assert manifest_status(registry, name, digest) == 200


@pytest.mark.parametrize("where", ["configuration", "site"])
def test_protected_tags_on_a_v2_registry(registry, docker_client, transactional_db, settings, where):
    project = ProjectFactory(ident="acme")
    RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                              password=registry.password)
    if where == "configuration":
        BuildConfigurationFactory(project=project, ident="app", protected_tags="latest, release-*")
        origin = "configuration 'app'"
    else:
        settings.DOCKERSUPPORT_PROTECTED_TAGS = "latest release-*"
        origin = "DOCKERSUPPORT_PROTECTED_TAGS"
    name = repo()
    digest = push_unique(docker_client, registry, name, "build-5")
    retag(registry, name, digest, "release-1")
    # Both tags were pushed by deleted builds: only the protection keeps the digest.
    build_tag = pending(project, registry.address, name, "build-5", digest, configuration_ident="app")
    release = pending(project, registry.address, name, "release-1", digest, configuration_ident="app")
    other = push_unique(docker_client, registry, name, "build-6")
    unprotected = pending(project, registry.address, name, "build-6", other, configuration_ident="app")

    assert pending_deletions_process() == {"kept": 2, "deleted": 1}
    for row in (build_tag, release, unprotected):
        row.refresh_from_db()
    assert release.cleanup_reason == f"tag 'release-1' is protected (pattern 'release-*' of {origin})"
    assert build_tag.cleanup_reason.startswith(
        f"protected tag 'release-1' (pattern 'release-*' of {origin}) points to this digest")
    assert manifest_status(registry, name, digest) == 200 and manifest_status(registry, name, "release-1") == 200
    assert unprotected.cleanup_status == "deleted" and manifest_status(registry, name, other) == 404


# --- ECR (moto) ------------------------------------------------------------------------------------

def ecr_image(ecr, repository, *tags) -> str:
    """An image of its own in moto's ECR with these tags; its digest."""
    seed = uuid.uuid4().hex
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": "sha256:" + (seed * 2), "size": 1,
                                      "mediaType": "application/vnd.docker.container.image.v1+json"},
                           "layers": [{"digest": "sha256:" + (seed[::-1] * 2), "size": 1,
                                       "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]})
    digest = ""
    for tag in tags:
        digest = ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)["image"]["imageId"][
            "imageDigest"]
    return digest


def ecr_tags(ecr, repository, digest=None) -> set[str]:
    return {i.get("imageTag", "") for i in ecr.list_images(repositoryName=repository)["imageIds"]
            if digest is None or i["imageDigest"] == digest}


@pytest.fixture
def ecr_world(moto_server, transactional_db):
    ecr = moto_server.boto3_client("ecr")
    repository = f"trust-{uuid.uuid4().hex[:8]}"
    ecr.create_repository(repositoryName=repository)
    project = ProjectFactory(ident=f"ecr-{uuid.uuid4().hex[:6]}")
    connection = EcrConnectionFactory(project=project, endpoint_url=moto_server.endpoint_url)
    return ecr, repository, project, connection


def test_a_kept_build_that_pushed_the_same_tag_and_digest_keeps_it_on_ecr(ecr_world):
    ecr, repository, project, connection = ecr_world
    digest = ecr_image(ecr, repository, "stable")
    configuration = BuildConfigurationFactory(project=project, ident=f"{project.ident}-app")
    kept = BuildFactory(configuration=configuration, number=9, status="succeeded")
    PushedImage.objects.create(build=kept, project=project, configuration_ident=configuration.ident, build_number=9,
                               registry=connection.registry_address, repository=repository, tag="stable",
                               digest=digest, pushed_at=timezone.now())
    image = pending(project, connection.registry_address, repository, "stable", digest,
                    configuration_ident=configuration.ident, build_number=8)

    assert pending_deletions_process() == {"kept": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == f"build {kept}, which is kept, pushed the same digest"
    assert ecr_tags(ecr, repository, digest) == {"stable"}


@pytest.mark.parametrize("where", ["configuration", "site"])
def test_protected_tags_on_ecr_only_the_deleted_builds_own_tag_goes(ecr_world, settings, where):
    ecr, repository, project, connection = ecr_world
    ident = f"{project.ident}-app"
    BuildConfigurationFactory(project=project, ident=ident, protected_tags="v*" if where == "configuration" else "")
    if where == "site":
        settings.DOCKERSUPPORT_PROTECTED_TAGS = "latest,v*"
    digest = ecr_image(ecr, repository, "build-1", "v2.0")
    own = pending(project, connection.registry_address, repository, "build-1", digest, configuration_ident=ident)
    protected = pending(project, connection.registry_address, repository, "v2.0", digest, configuration_ident=ident)

    assert pending_deletions_process() == {"deleted": 1, "kept": 1}
    own.refresh_from_db()
    protected.refresh_from_db()
    assert own.cleanup_reason.startswith("only tag 'build-1' was removed: tag(s) v2.0 still point to the digest")
    assert protected.cleanup_status == "kept" and protected.cleanup_reason.startswith("tag 'v2.0' is protected")
    assert ecr_tags(ecr, repository, digest) == {"v2.0"}


def test_ecr_lists_each_repository_once_right_before_deleting(ecr_world, moto_server):
    ecr, repository, project, connection = ecr_world
    for tag in ("1", "2", "3"):
        pending(project, connection.registry_address, repository, tag, ecr_image(ecr, repository, tag))
    ecr_image(ecr, repository, "by-hand")  # not ours: stays
    recording = f"{moto_server.endpoint_url}/moto-api/recorder"
    requests.post(f"{recording}/reset-recording", timeout=10)
    requests.post(f"{recording}/start-recording", timeout=10)
    try:
        assert pending_deletions_process() == {"deleted": 3}
        sent = requests.get(f"{recording}/download-recording", timeout=10).text.splitlines()
    finally:
        requests.post(f"{recording}/stop-recording", timeout=10)
    calls = [json.loads(line)["headers"].get("X-Amz-Target", "").rpartition(".")[2] for line in sent]
    calls = [call for call in calls if call in ("ListImages", "BatchDeleteImage")]
    assert calls == ["ListImages", "BatchDeleteImage"]
    assert ecr_tags(ecr, repository) == {"by-hand"}


def test_an_ecr_connection_aws_refuses_hands_the_images_to_the_next(ecr_world):
    ecr, repository, project, connection = ecr_world
    denied = json.dumps({"__type": "AccessDeniedException", "message": "not authorized to perform ecr:*"}).encode()
    with StandIn("127.0.0.4", lambda r: Answer(400, {"Content-Type": "application/x-amz-json-1.1"}, denied)) as aws:
        # The same registry (account and region) through an endpoint that denies these credentials everything.
        EcrConnectionFactory(project=project, ident="a-pull", endpoint_url=aws.url)
        digest = ecr_image(ecr, repository, "1")
        image = pending(project, connection.registry_address, repository, "1", digest)
        assert pending_deletions_process() == {"deleted": 1}
        assert aws.requests  # it was asked first
    image.refresh_from_db()
    assert image.cleanup_reason == (
        f"image deleted, with connection {connection}; refused before: connection {project.ident}/a-pull: AWS "
        "ListImages failed: AccessDeniedException: HTTP 400")
    assert ecr_tags(ecr, repository) == set()
