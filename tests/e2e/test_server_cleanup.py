"""Server clean-up on a real registry (and moto's ECR): retention, tombstones, safe registry deletion."""

import base64
import io
import json
import tarfile
import uuid
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from builds.cleanup.registry import pending_deletions_process
from builds.models import Build, CleanupRun, PushedImage
from connections.registries import DeletionResult, ImageRef, open_registry
from tests.e2e.test_docker_events import registry_digest
from tests.factories import ProjectFactory, RegistryConnectionFactory
from tests.harness import Registry

pytestmark = [pytest.mark.e2e]


def unique_tarball() -> bytes:
    """A root file system of one file with random content: an image of its own digest."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        content = uuid.uuid4().hex.encode()
        info = tarfile.TarInfo("unique.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


def push_unique(docker_client, registry, repository, tag) -> str:
    """Pushes a small image of its own (its own digest) and returns the registry's digest."""
    reference = f"{registry.address}/{repository}"
    docker_client.api.import_image_from_data(unique_tarball(), repository=reference, tag=tag)
    for line in docker_client.images.push(reference, tag, auth_config=registry.auth_config, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{reference}:{tag}")
    return registry_digest(registry, repository, tag)


def retag(registry, repository, digest, new_tag):
    """Points another tag at an existing manifest, as a person with `docker tag` + push would."""
    from connections.registries import MANIFEST_TYPES

    auth = (registry.username, registry.password)
    manifest = requests.get(f"{registry.url}/v2/{repository}/manifests/{digest}", auth=auth,
                            headers={"Accept": MANIFEST_TYPES}, timeout=10)
    response = requests.put(f"{registry.url}/v2/{repository}/manifests/{new_tag}", data=manifest.content, auth=auth,
                            headers={"Content-Type": manifest.headers["Content-Type"]}, timeout=10)
    assert response.status_code == 201, response.text


def manifest_status(registry, repository, reference):
    from connections.registries import MANIFEST_TYPES

    return requests.head(f"{registry.url}/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES},
                         auth=(registry.username, registry.password), timeout=10).status_code


@pytest.fixture
def registry_project(registry, transactional_db):
    project = ProjectFactory()
    RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                              password=registry.password)
    return project


def tombstone(project, registry, repository, tag, digest, **fields):
    return PushedImage.objects.create(
        project=project, configuration_ident="gone", build_number=1, registry=registry.address, repository=repository,
        tag=tag, digest=digest, pushed_at=timezone.now(), cleanup_status=PushedImage.CleanupStatus.PENDING,
        next_attempt_at=timezone.now(), **fields)


def test_three_builds_keep_last_one(manage, agent, registry_configuration, registry, docker_client, busybox_image):
    registry_configuration.keep_last = 1
    registry_configuration.cleanup_pushed_images = True
    registry_configuration.save()
    repo = f"retention/{uuid.uuid4().hex[:6]}"
    digests = {}
    for number in (1, 2, 3):
        # Each build pushes an image of its own; the newest one also re-pushes the oldest one's image.
        tag = str(number)
        source = f"{registry.address}/{repo}:{tag}"
        script = f"docker push {source}"
        if number == 3:
            script += f" && docker tag {registry.address}/{repo}:1 {registry.address}/{repo}:again" \
                      f" && docker push {registry.address}/{repo}:again"
        docker_client.api.import_image_from_data(unique_tarball(), repository=f"{registry.address}/{repo}", tag=tag)
        result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
        assert result.returncode == 0, result.stdout + result.stderr
        digests[number] = registry_digest(registry, repo, tag)
    builds = list(Build.objects.filter(configuration=registry_configuration).order_by("number"))
    assert [b.pushed_images.count() for b in builds] == [1, 1, 2]

    dry = manage("cleanup_builds", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"build {builds[0]} " in dry.stdout and f"build {builds[1]} " in dry.stdout
    assert f"delete {registry.address}/{repo}@{digests[2]} from {registry.address} with connection" in dry.stdout
    assert "Dry run: nothing was changed." in dry.stdout
    assert Build.objects.filter(configuration=registry_configuration).count() == 3
    assert manifest_status(registry, repo, digests[2]) == 200 and not CleanupRun.objects.exists()

    result = manage("cleanup_builds")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] deleting build" in result.stdout  # progress
    assert list(Build.objects.filter(configuration=registry_configuration)) == [builds[2]]
    assert manifest_status(registry, repo, digests[2]) == 404  # the middle build's unique image is gone
    assert manifest_status(registry, repo, digests[3]) == 200  # the kept build's image stays
    assert manifest_status(registry, repo, digests[1]) == 200  # re-pushed by the kept build: stays
    assert manifest_status(registry, repo, "again") == 200
    first = PushedImage.objects.get(build__isnull=True, digest=digests[1])
    assert first.cleanup_status == "kept" and f"build {builds[2]}, which is kept, pushed the same digest" in (
        first.cleanup_reason)
    assert PushedImage.objects.get(build__isnull=True, digest=digests[2]).cleanup_status == "deleted"
    run = CleanupRun.objects.get()
    assert (run.builds_deleted, run.images_deleted, run.images_kept, run.images_failed) == (2, 1, 1, 0)
    assert run.finished_at is not None


def test_a_tag_set_by_hand_on_the_digest_keeps_the_image(registry_project, registry, docker_client):
    repo = f"shared/{uuid.uuid4().hex[:6]}"
    digest = push_unique(docker_client, registry, repo, "build-7")
    retag(registry, repo, digest, "stable")
    image = tombstone(registry_project, registry, repo, "build-7", digest)
    assert pending_deletions_process() == {"kept": 1}
    image.refresh_from_db()
    assert image.cleanup_status == "kept"
    assert "tag 'stable' also points to this digest and was not pushed by a deleted build" in image.cleanup_reason
    assert manifest_status(registry, repo, "stable") == 200


def test_deletion_disabled_on_the_registry_is_explained(start_service, docker_client, transactional_db):
    no_delete = start_service(Registry(delete_enabled=False))
    project = ProjectFactory()
    RegistryConnectionFactory(project=project, registry=no_delete.address, username=no_delete.username,
                              password=no_delete.password)
    digest = push_unique(docker_client, no_delete, "app/x", "1")
    image = tombstone(project, no_delete, "app/x", "1", digest)
    assert pending_deletions_process() == {"failed": 1}
    image.refresh_from_db()
    assert image.cleanup_status == "failed"
    assert "HTTP 405" in image.cleanup_reason and "storage.delete.enabled: true" in image.cleanup_reason


def test_a_registry_down_during_cleanup_and_up_later_ends_deleted(start_service, docker_client, transactional_db):
    flaky = start_service(Registry())
    project = ProjectFactory()
    RegistryConnectionFactory(project=project, registry=flaky.address, username=flaky.username,
                              password=flaky.password)
    digest = push_unique(docker_client, flaky, "app/y", "1")
    image = tombstone(project, flaky, "app/y", "1", digest)
    flaky.stop(keep_data=True)
    assert pending_deletions_process() == {"retrying": 1}
    image.refresh_from_db()
    assert (image.cleanup_status, image.cleanup_attempts) == ("pending", 1)
    assert "cannot be reached" in image.cleanup_reason
    assert image.next_attempt_at > timezone.now()
    assert pending_deletions_process() == {}  # its backoff has not passed
    flaky.start()
    assert pending_deletions_process(now=timezone.now() + timedelta(hours=1)) == {"deleted": 1}
    image.refresh_from_db()
    assert image.cleanup_status == "deleted"
    assert manifest_status(flaky, "app/y", digest) == 404


def test_a_connection_of_another_project_is_never_used(registry, docker_client, transactional_db):
    owner = ProjectFactory(ident="owner")
    RegistryConnectionFactory(project=owner, registry=registry.address, username=registry.username,
                              password=registry.password)
    stranger = ProjectFactory(ident="stranger")
    digest = push_unique(docker_client, registry, "owner/app", "1")
    image = tombstone(stranger, registry, "owner/app", "1", digest)
    assert pending_deletions_process() == {"failed": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == f"no connection for {registry.address} in project 'stranger' or its ancestors"
    assert manifest_status(registry, "owner/app", digest) == 200


def test_an_ancestors_connection_is_used_for_a_subprojects_images(registry, docker_client, registry_project):
    child = ProjectFactory(parent=registry_project)
    digest = push_unique(docker_client, registry, "child/app", "1")
    tombstone(child, registry, "child/app", "1", digest)
    assert pending_deletions_process() == {"deleted": 1}


def test_ecr_deletion_in_chunks_with_one_failing_id(moto_server, transactional_db):
    from tests.factories import EcrConnectionFactory

    ecr = moto_server.boto3_client("ecr")
    repository = f"app-{uuid.uuid4().hex[:6]}"
    ecr.create_repository(repositoryName=repository)
    project = ProjectFactory()
    connection = EcrConnectionFactory(project=project, endpoint_url=moto_server.endpoint_url)
    images = []
    for number in range(150):
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {"digest": f"sha256:{number:064x}", "size": 1,
                                          "mediaType": "application/vnd.docker.container.image.v1+json"},
                               "layers": [{"digest": f"sha256:{number + 1000:064x}", "size": 1,
                                           "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]})
        digest = ecr.put_image(repositoryName=repository, imageManifest=manifest,
                               imageTag=f"b{number}")["image"]["imageId"]["imageDigest"]
        images.append(PushedImage(
            project=project, configuration_ident="gone", build_number=number, registry=connection.registry_address,
            repository=repository, tag=f"b{number}", digest=digest, pushed_at=timezone.now(),
            cleanup_status="pending", next_attempt_at=timezone.now()))
    images.append(PushedImage(  # a recorded digest that is none: kept here, never sent to AWS
        project=project, configuration_ident="gone", build_number=999, registry=connection.registry_address,
        repository=repository, tag="bad", digest="sha256:not-a-digest", pushed_at=timezone.now(),
        cleanup_status="pending", next_attempt_at=timezone.now()))
    PushedImage.objects.bulk_create(images)
    recording = f"{moto_server.endpoint_url}/moto-api/recorder"
    requests.post(f"{recording}/reset-recording", timeout=10)
    requests.post(f"{recording}/start-recording", timeout=10)
    try:
        tally = pending_deletions_process()
        sent = requests.get(f"{recording}/download-recording", timeout=10).text.splitlines()
    finally:
        requests.post(f"{recording}/stop-recording", timeout=10)
    sizes = []
    for line in map(json.loads, sent):  # what our code really sent to AWS
        if line["headers"].get("X-Amz-Target", "").endswith(".BatchDeleteImage"):
            body = base64.b64decode(line["body"]) if line.get("body_encoded") else line["body"]
            sizes.append(len(json.loads(body)["imageIds"]))
    assert sizes == [100, 50]
    assert tally == {"deleted": 150, "kept": 1}
    bad = PushedImage.objects.get(tag="bad")
    assert bad.cleanup_status == "kept" and "not one a registry would accept" in bad.cleanup_reason
    assert ecr.list_images(repositoryName=repository)["imageIds"] == []

    # AWS's own refusal of one id of a call is that image's failure alone, with AWS's reason.
    own = ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="last")["image"]["imageId"]
    with open_registry(connection) as session:
        answers = session.delete(repository, [ImageRef(digest=own["imageDigest"]), ImageRef(digest="sha256:bad")])
    assert answers[ImageRef(digest=own["imageDigest"])].result == DeletionResult.DELETED
    failed = answers[ImageRef(digest="sha256:bad")]
    assert failed.result == DeletionResult.FAILED and "ECR BatchDeleteImage: InvalidImageDigest" in failed.reason


def test_ecr_removes_only_the_deleted_builds_tag_when_another_tag_points_to_the_digest(moto_server,
                                                                                       transactional_db):
    from tests.factories import EcrConnectionFactory

    ecr = moto_server.boto3_client("ecr")
    repository = f"shared-{uuid.uuid4().hex[:6]}"
    ecr.create_repository(repositoryName=repository)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": "sha256:" + "1" * 64, "size": 1,
                                      "mediaType": "application/vnd.docker.container.image.v1+json"},
                           "layers": [{"digest": "sha256:" + "2" * 64, "size": 1,
                                       "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}]})
    digest = ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="build-1")["image"][
        "imageId"]["imageDigest"]
    ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag="stable")
    project = ProjectFactory()
    connection = EcrConnectionFactory(project=project, endpoint_url=moto_server.endpoint_url)
    image = PushedImage.objects.create(
        project=project, configuration_ident="gone", build_number=1, registry=connection.registry_address,
        repository=repository, tag="build-1", digest=digest, pushed_at=timezone.now(), cleanup_status="pending",
        next_attempt_at=timezone.now())
    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert "only tag 'build-1' was removed: tag(s) stable still point to the digest" in image.cleanup_reason
    assert [i.get("imageTag") for i in ecr.list_images(repositoryName=repository)["imageIds"]] == ["stable"]
