"""Bearer-token registries (the auth of Docker Hub, GitLab, Harbor): login test and deletion."""

import pytest
import requests

from builds.cleanup.registry import pending_deletions_process
from connections.registries import MANIFEST_TYPES
from connections.services import connection_test
from tests.e2e.test_server_cleanup import tombstone, unique_tarball
from tests.factories import ProjectFactory, RegistryConnectionFactory
from tests.harness.token_registry import TokenRegistry

pytestmark = [pytest.mark.e2e]


def head(registry, repository, reference):
    """HEAD a manifest with a token minted by the test's own token service (not our client code)."""
    token = registry.tokens.token([f"repository:{repository}:pull"])
    return requests.head(f"{registry.url}/v2/{repository}/manifests/{reference}", timeout=10,
                         headers={"Accept": MANIFEST_TYPES, "Authorization": f"Bearer {token}"})


def push(docker_client, registry, repository, tag) -> str:
    reference = f"{registry.address}/{repository}"
    docker_client.api.import_image_from_data(unique_tarball(), repository=reference, tag=tag)
    for line in docker_client.images.push(reference, tag, auth_config=registry.auth_config, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{reference}:{tag}")
    return head(registry, repository, tag).headers["Docker-Content-Digest"]


@pytest.fixture
def token_registry(start_service):
    return start_service(TokenRegistry())


@pytest.fixture
def connection(token_registry, transactional_db):
    return RegistryConnectionFactory(project=ProjectFactory(), registry=token_registry.address,
                                     username=token_registry.username, password=token_registry.password)


def test_the_connection_test_gets_a_token_from_the_realm(connection, token_registry):
    result = connection_test(connection)
    assert result.ok, result.error
    assert f"token service {token_registry.tokens.realm} accepted the credentials" in result.verified
    connection.password = "wrong"
    result = connection_test(connection)
    assert not result.ok
    assert f"token service {token_registry.tokens.realm} refused the credentials: HTTP 401" in result.error
    assert "wrong username or password" in result.error


def test_deletion_asks_a_token_for_the_repositorys_delete_scope_and_reuses_it(connection, token_registry,
                                                                              docker_client):
    digests = [push(docker_client, token_registry, "team/app", tag) for tag in ("1", "2")]
    for tag, digest in zip(("1", "2"), digests):
        tombstone(connection.project, token_registry, "team/app", tag, digest)
    token_registry.tokens.requests.clear()
    assert pending_deletions_process() == {"deleted": 2}
    assert [head(token_registry, "team/app", d).status_code for d in digests] == [404, 404]
    scopes = [tuple(r["scope"]) for r in token_registry.tokens.requests]
    assert ("repository:team/app:pull,delete",) in scopes
    # One token per scope, reused for both images while valid (tokens live about 60 s).
    assert len(scopes) == len(set(scopes))
