"""Session fixtures on real services (Docker daemon, registry, AWS test server, Redis) and markers.

Outside CI a test whose service program is not installed is skipped with the reason; with CI=true
it fails instead, so that a CI run never passes by skipping. A service that is installed but does
not start is always an error.
"""

import os

import pytest

from tests.harness import (
    BUSYBOX_IMAGE,
    DockerDaemon,
    MotoServer,
    RedisServer,
    Registry,
    ServiceUnavailable,
    existing_redis_url,
    import_busybox_image,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
SERVICE_FIXTURES = {
    "docker_daemon", "docker_client", "busybox_image", "registry", "moto_server", "redis_url", "start_service",
}  # fmt: skip


def pytest_configure(config):
    config.addinivalue_line("markers", "services: uses real services started by the harness (tests/harness)")
    config.addinivalue_line("markers", "e2e: end-to-end test across the whole stack; not run in the SQLite pass")


def pytest_collection_modifyitems(items):
    """Mark every test that uses a service fixture `services`, so `-m "not services"` runs without them."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


def start(service):
    """service.start(); a missing program skips outside CI and fails in CI."""
    try:
        return service.start()
    except ServiceUnavailable as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI=true: required services must start)", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def docker_daemon():
    """A private dockerd: .host (unix://...), .client(), .restart(), .data_root."""
    daemon = start(DockerDaemon())
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def docker_client(docker_daemon):
    client = docker_daemon.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client):
    """The reference of a busybox image in docker_daemon; run it with network_mode="none"."""
    import_busybox_image(docker_client)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def registry():
    """A registry with login: .address (127.0.0.1:PORT), .url, .username, .password, .auth_config."""
    server = start(Registry())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    """moto's AWS server: .endpoint_url, .region, .boto3_client(service), .reset()."""
    server = start(MotoServer())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url():
    """REDIS_URL if it answers, else the local Redis on 6379 (db 15), else a private redis-server."""
    url = existing_redis_url()
    if url:
        yield url
        return
    server = start(RedisServer())
    yield server.url()
    server.stop()


@pytest.fixture
def start_service():
    """Starts extra services for one test and stops them after it: start_service(Registry(delete_enabled=False)),
    start_service(DockerDaemon()) for a second agent, or a registry the test takes down and brings back."""
    started = []

    def _start(service):
        started.append(service)
        return start(service)

    yield _start
    for service in reversed(started):
        service.stop()
