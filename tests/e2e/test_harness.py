"""The test harness itself: its services are real and work together the way later tests rely on."""

import base64
import uuid

import docker
import pytest
import requests

from tests.harness import DockerDaemon, Registry, import_busybox_image, redis_answers

pytestmark = [pytest.mark.e2e]

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def anonymous_client(daemon, monkeypatch, tmp_path):
    """A client that cannot find credentials anywhere (docker-py reads $DOCKER_CONFIG/config.json)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return daemon.client()


def push(client, repository, tag, **kwargs):
    """Push and return the stream's error message (None on success) and the pushed digest."""
    error = digest = None
    for line in client.images.push(repository, tag=tag, stream=True, decode=True, **kwargs):
        error = error or line.get("error")
        digest = digest or line.get("aux", {}).get("Digest")
    return error, digest


def tagged(client, image, registry, tag="v1"):
    """Tag image for registry under a repository of its own; returns the repository."""
    repository = f"{registry.address}/harness/{uuid.uuid4().hex[:8]}"
    client.images.get(image).tag(repository, tag)
    return repository


def test_push_and_pull_with_login(docker_daemon, busybox_image, registry):
    client = docker_daemon.client()
    client.login(registry.username, registry.password, registry=registry.address, reauth=True)
    repository = tagged(client, busybox_image, registry)
    image_id = client.images.get(busybox_image).id

    error, digest = push(client, repository, "v1")
    assert error is None
    assert digest.startswith("sha256:")

    client.images.remove(f"{repository}:v1")
    assert client.images.pull(repository, tag="v1").id == image_id
    client.images.remove(f"{repository}:v1")
    client.close()


def test_push_and_pull_without_login_are_denied(docker_daemon, busybox_image, registry, monkeypatch, tmp_path):
    client = anonymous_client(docker_daemon, monkeypatch, tmp_path)
    repository = tagged(client, busybox_image, registry)

    error, _ = push(client, repository, "v1")
    assert error and ("no basic auth credentials" in error or "unauthorized" in error), error

    # The image exists in the registry, so a failed pull is about credentials, not a missing image.
    assert push(client, repository, "v1", auth_config=registry.auth_config)[0] is None
    client.images.remove(f"{repository}:v1")
    with pytest.raises(docker.errors.APIError, match="(?i)unauthorized|no basic auth|denied"):
        client.images.pull(repository, tag="v1")
    client.close()


def test_container_runs_without_network_and_returns_exit_code(docker_client, busybox_image):
    assert docker_client.containers.run(busybox_image, ["echo", "hi"], network_mode="none", remove=True) == b"hi\n"

    container = docker_client.containers.run(busybox_image, ["sh", "-c", "exit 3"], network_mode="none", detach=True)
    try:
        assert container.wait(timeout=30)["StatusCode"] == 3
    finally:
        container.remove(force=True)


def test_moto_gives_ecr_token_and_assumes_role_with_external_id(moto_server):
    sts = moto_server.boto3_client("sts")
    credentials = sts.assume_role(
        RoleArn="arn:aws:iam::123456789012:role/ci-push", RoleSessionName="dockersupport", ExternalId="ext-42"
    )["Credentials"]
    assert credentials["AccessKeyId"] and credentials["SessionToken"]

    ecr = moto_server.boto3_client(
        "ecr",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    data = ecr.get_authorization_token(registryIds=["123456789012"])["authorizationData"][0]
    assert base64.b64decode(data["authorizationToken"]).decode().startswith("AWS:")
    assert "123456789012.dkr.ecr.eu-west-1" in data["proxyEndpoint"]
    assert data["expiresAt"]


def test_two_daemons_run_at_once(docker_daemon, docker_client, busybox_image, start_service):
    second = start_service(DockerDaemon())
    other = second.client()
    assert second.host != docker_daemon.host
    assert other.info()["ID"] != docker_client.info()["ID"]

    import_busybox_image(other)
    container = other.containers.run(busybox_image, ["sleep", "30"], network_mode="none", detach=True, init=True)
    try:
        assert container.id not in {c.id for c in docker_client.containers.list(all=True)}
        assert docker_client.containers.run(busybox_image, ["true"], network_mode="none", remove=True) == b""
    finally:
        container.remove(force=True)
        other.close()


def test_daemon_restart_keeps_images(start_service):
    daemon = start_service(DockerDaemon())
    image_id = import_busybox_image(daemon.client()).id
    daemon.restart()
    assert daemon.client().images.get(image_id).id == image_id


def test_registry_delete_flag_and_outage(busybox_image, docker_client, registry, start_service):
    """The session registry deletes manifests; a registry made with delete_enabled=False refuses, and
    comes back after an outage on the same address with its images."""
    no_delete = start_service(Registry(delete_enabled=False))
    for server, status in [(registry, 202), (no_delete, 405)]:
        repository = tagged(docker_client, busybox_image, server)
        _, digest = push(docker_client, repository, "v1", auth_config=server.auth_config)
        docker_client.images.remove(f"{repository}:v1")
        path = repository.split("/", 1)[1]
        auth = (server.username, server.password)
        response = requests.delete(f"{server.url}/v2/{path}/manifests/{digest}", auth=auth)
        assert response.status_code == status, response.text

    address = no_delete.address
    no_delete.stop(keep_data=True)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{no_delete.url}/v2/", timeout=2)
    no_delete.start()
    assert no_delete.address == address
    response = requests.head(
        f"{no_delete.url}/v2/{path}/manifests/v1", auth=(no_delete.username, no_delete.password),
        headers={"Accept": MANIFEST_V2},
    )  # fmt: skip
    assert response.headers["Docker-Content-Digest"] == digest


def test_redis_answers(redis_url):
    assert redis_answers(redis_url)
