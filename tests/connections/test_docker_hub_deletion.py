"""Docker Hub clean-up through Docker Hub's API (the registry refuses manifest DELETE): tags listed, read again and
deleted with a bearer token from its login endpoint, under clean-up's rules (builds.cleanup.registry) — against
tests/harness/docker_hub.py, a local double of exactly the documented requests and answers, beside Debian's
docker-registry standing for Docker Hub's registry (named in DOCKERSUPPORT_DOCKER_HUB_REGISTRIES: docker.io itself
always uses hub.docker.com)."""

import json
import logging
import uuid

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from builds.cleanup.registry import pending_deletions_process
from builds.models import PushedImage
from connections.registries import ImageRef, open_registry
from connections.registries.docker_hub import DockerHubRegistry
from connections.registries.github import GitHubRegistry
from connections.registries.v2_registry import V2Registry
from connections.services import connection_test
from tests.conftest import start
from tests.factories import BuildConfigurationFactory, BuildFactory, ProjectFactory, RegistryConnectionFactory
from tests.harness.docker_hub import DockerHubApi
from tests.harness.github_packages import GhcrRegistry
from tests.harness.stand_in import Answer, StandIn

pytestmark = pytest.mark.django_db
PAT = "dckr_pat_delete-5f0e2c9a"  # Read, Write, Delete
READ_PAT = "dckr_pat_read-only-81b3"  # Read, Write
OTHER_PAT = "dckr_pat_other-4c2d9e"  # Read, Write, Delete of an account that cannot see every repository
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64  # digests the registry does not hold


@pytest.fixture(scope="module")
def hub_registry():
    """The registry standing for registry-1.docker.io: read only when Docker Hub's API answers 404."""
    registry = start(GhcrRegistry({"other": OTHER_PAT}, username="ci", password=PAT))
    yield registry
    registry.stop()


@pytest.fixture
def hub(hub_registry, settings):
    with DockerHubApi(accounts={"ci": {PAT: "repo:admin", READ_PAT: "repo:write"},
                                "other": {OTHER_PAT: "repo:admin"}}) as api:
        settings.DOCKERSUPPORT_DOCKER_HUB_API = api.url
        settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = [hub_registry.address]
        yield api


@pytest.fixture
def hostile():
    with StandIn("127.0.0.8", lambda recorded: Answer(200, {"Content-Type": "application/json"},
                                                      b'{"results": [], "next": null}')) as stand_in:
        yield stand_in


def hub_connection(**fields):
    registry = django_settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES[0]  # the hub fixture's
    return RegistryConnectionFactory(**{"registry": registry, "username": "ci", "password": PAT, **fields})


def tombstone(of, repository, tag, digest, **fields):
    """A pushed image of a deleted build in the project and registry of connection `of`, to clean up."""
    return PushedImage.objects.create(
        project=of.project, configuration_ident="gone", build_number=fields.pop("build_number", 1),
        registry=of.registry, repository=repository, tag=tag, digest=digest, pushed_at=timezone.now(),
        cleanup_status="pending", next_attempt_at=timezone.now(), **fields)


def reason(image) -> str:
    image.refresh_from_db()
    return image.cleanup_reason


# --- Which registry ------------------------------------------------------------------------------


def test_docker_hub_and_ghcr_are_chosen_by_identity_and_nothing_else_by_default(settings):
    settings.DOCKERSUPPORT_DOCKER_HUB_API = settings.DOCKERSUPPORT_GITHUB_API = "http://127.0.0.7:9"
    kinds = {}
    for address in ("", "index.docker.io", "https://registry-1.docker.io", "ghcr.io", "GHCR.IO", "127.0.0.1:5000",
                    "registry.example.test"):
        with open_registry(RegistryConnectionFactory.build(registry=address)) as registry:
            kinds[address] = type(registry)
    assert kinds == {"": DockerHubRegistry, "index.docker.io": DockerHubRegistry,
                     "https://registry-1.docker.io": DockerHubRegistry, "ghcr.io": GitHubRegistry,
                     "GHCR.IO": GitHubRegistry, "127.0.0.1:5000": V2Registry, "registry.example.test": V2Registry}
    settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = ["127.0.0.1:5000"]
    with open_registry(RegistryConnectionFactory.build(registry="127.0.0.1:5000")) as registry:
        assert isinstance(registry, DockerHubRegistry)


def test_docker_hub_and_ghcr_credentials_go_to_their_own_apis_the_settings_only_to_listed_registries(settings):
    """DOCKERSUPPORT_*_API name the APIs of the registries in DOCKERSUPPORT_*_REGISTRIES (GHES, doubles): set for a
    GitHub Enterprise Server, ghcr.io's tokens must still go to api.github.com alone, and docker.io's to
    hub.docker.com."""
    settings.DOCKERSUPPORT_DOCKER_HUB_API = "http://127.0.0.7:9"
    settings.DOCKERSUPPORT_GITHUB_API = "https://ghes.test/api/v3"
    settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = ["127.0.0.1:5000"]
    settings.DOCKERSUPPORT_GITHUB_REGISTRIES = ["containers.ghes.test"]
    bases = {}
    for address in ("", "index.docker.io", "127.0.0.1:5000", "ghcr.io", "GHCR.IO", "containers.ghes.test"):
        with open_registry(RegistryConnectionFactory.build(registry=address)) as registry:
            bases[address] = registry.api.base
    assert bases == {"": "https://hub.docker.com", "index.docker.io": "https://hub.docker.com",
                     "127.0.0.1:5000": "http://127.0.0.7:9", "ghcr.io": "https://api.github.com",
                     "GHCR.IO": "https://api.github.com", "containers.ghes.test": "https://ghes.test/api/v3"}


# --- Deleted -------------------------------------------------------------------------------------


def test_a_deleted_builds_tag_is_deleted_with_a_token_from_the_login_endpoint(hub, caplog):
    caplog.set_level(logging.DEBUG)
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1")
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    assert reason(image) == ("tag 'build-1' deleted through Docker Hub's API (DELETE /v2/repositories/acme/app/tags/"
                             f"build-1/: HTTP 204), with connection {connection}")
    assert hub.deleted == [("acme/app", "build-1")]
    login, listing, reread, delete = hub.requests
    assert (login.method, login.path, json.loads(login.body)) == (
        "POST", "/v2/auth/token", {"identifier": "ci", "secret": PAT})
    assert "Authorization" not in login.headers
    assert (listing.method, listing.path) == ("GET", "/v2/namespaces/acme/repositories/app/tags?page_size=100&page=1")
    assert (reread.method, reread.path) == ("GET", "/v2/namespaces/acme/repositories/app/tags/build-1")
    assert (delete.method, delete.path) == ("DELETE", "/v2/repositories/acme/app/tags/build-1/")
    token = listing.headers["Authorization"]
    assert token.startswith("Bearer hub-jwt-") and {r.headers["Authorization"] for r in hub.requests[1:]} == {token}
    assert PAT not in caplog.text and token.split()[1] not in caplog.text


def test_a_digest_goes_with_every_tag_of_deleted_builds_on_it_page_after_page(hub):
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1", "build-1-amd64")
    hub.push("acme/app", D2, *[f"other-{n:03}" for n in range(150)])  # two pages of 100
    first = tombstone(connection, "acme/app", "build-1", D1)
    tombstone(connection, "acme/app", "build-1-amd64", D1)
    assert pending_deletions_process() == {"deleted": 2}
    assert sorted(hub.deleted) == [("acme/app", "build-1"), ("acme/app", "build-1-amd64")]
    assert "tag 'build-1' deleted" in reason(first) and "tag 'build-1-amd64' deleted" in reason(first)
    pages = [r.path for r in hub.requests if r.path.startswith("/v2/namespaces/acme/repositories/app/tags?")]
    assert pages == ["/v2/namespaces/acme/repositories/app/tags?page_size=100&page=1",
                     "/v2/namespaces/acme/repositories/app/tags?page_size=100&page=2"]
    assert len(hub.tags["acme/app"]) == 150


# --- Kept ----------------------------------------------------------------------------------------


def test_a_digest_a_kept_build_pushed_is_kept_and_nothing_is_deleted(hub):
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1", "build-2")
    image = tombstone(connection, "acme/app", "build-1", D1)
    configuration = BuildConfigurationFactory(project=connection.project)
    PushedImage.objects.create(project=connection.project, build=BuildFactory(configuration=configuration),
                               configuration_ident=configuration.ident, build_number=2, registry=connection.registry,
                               repository="acme/app", tag="build-2", digest=D1, pushed_at=timezone.now())
    assert pending_deletions_process() == {"kept": 1}
    assert "which is kept, pushed the same digest" in reason(image)
    assert hub.deleted == [] and not [r for r in hub.requests if r.method == "DELETE"]


def test_a_protected_tag_is_kept_and_only_the_builds_own_tag_goes(hub, settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "release-*"
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1", "release-1")
    hub.push("acme/app", D2, "release-2")
    image = tombstone(connection, "acme/app", "build-1", D1)
    protected = tombstone(connection, "acme/app", "release-2", D2)
    assert pending_deletions_process() == {"deleted": 1, "kept": 1}
    assert reason(image).startswith("only tag 'build-1' was removed: tag(s) release-1 still point to the digest")
    assert "protected (pattern 'release-*' of DOCKERSUPPORT_PROTECTED_TAGS)" in reason(protected)
    assert hub.deleted == [("acme/app", "build-1")]
    assert hub.tags["acme/app"] == {"release-1": D1, "release-2": D2}


def test_a_tag_set_by_hand_stays_and_only_the_builds_tag_goes(hub):
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1", "latest")
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    assert "tag(s) latest still point to the digest" in reason(image)
    assert hub.tags["acme/app"] == {"latest": D1}


def test_a_tag_pushed_again_after_the_listing_is_not_deleted(hub):
    hub.push("acme/app", D1, "build-1")
    with open_registry(hub_connection()) as registry:
        assert registry.tags_by_digest("acme/app") == {D1: {"build-1"}}
        hub.push("acme/app", D2, "build-1")  # someone pushes build-1 again meanwhile
        [answer] = registry.delete("acme/app", [ImageRef(digest=D1)]).values()
    assert answer.result == "gone" and f"tag 'build-1' now points to {D2}: pushed again since" in answer.reason
    assert hub.deleted == [] and hub.tags["acme/app"] == {"build-1": D2}


# --- Refused, retried, gone ----------------------------------------------------------------------


def test_a_token_without_the_delete_scope_is_refused_and_the_next_connection_deletes(hub):
    parent = ProjectFactory(ident="org")
    child = ProjectFactory(ident="team", parent=parent)
    reader = hub_connection(project=child, ident="reader", password=READ_PAT)
    pusher = hub_connection(project=parent, ident="pusher")
    hub.push("acme/app", D1, "build-1")
    image = tombstone(reader, "acme/app", "build-1", D1, connection=reader)
    assert pending_deletions_process() == {"deleted": 1}
    text = reason(image)
    assert text.startswith(f"tag 'build-1' deleted through Docker Hub's API (DELETE /v2/repositories/acme/app/tags/"
                           f"build-1/: HTTP 204), with connection {pusher}; refused before: connection {reader}: ")
    assert ("Docker Hub's API refused to delete tag 'build-1' with the credentials of 'ci' (DELETE "
            "/v2/repositories/acme/app/tags/build-1/: HTTP 403 access to the resource is forbidden with this token's "
            "scope); a personal access token needs the scope Read, Write, Delete") in text
    assert READ_PAT not in text and PAT not in text


def test_credentials_the_login_refuses_end_failed_naming_the_answer_without_the_secret(hub, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "dckr_pat_wrong-0b7d1e"
    hub.answers[("POST", "/v2/auth/token")] = Answer(401, {"Content-Type": "application/json"}, json.dumps(
        {"detail": f"Incorrect authentication credentials: {wrong}"}).encode())  # an API that echoes the secret
    connection = hub_connection(password=wrong)
    hub.push("acme/app", D1, "build-1")
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"failed": 1}
    assert reason(image) == (
        f"no connection may delete it: connection {connection}: Docker Hub's API refused the credentials of 'ci' "
        "(POST /v2/auth/token): HTTP 401 Incorrect authentication credentials: ***")
    assert wrong not in caplog.text and hub.deleted == []


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_busy_or_broken_hub_is_retried_later(hub, status):
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1")
    hub.answers[("DELETE", "/v2/repositories/")] = Answer(status, {"Content-Type": "application/json"},
                                                          b'{"detail": "try again later"}')
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"retrying": 1}
    image.refresh_from_db()
    assert (image.cleanup_status, image.cleanup_attempts) == ("pending", 1)
    assert image.cleanup_reason == (f"connection {connection}: Docker Hub's API: DELETE /v2/repositories/acme/app/tags/"
                                    f"build-1/ answered HTTP {status} try again later")


def test_a_hub_that_cannot_be_reached_is_retried(hub_registry, settings):
    settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = [hub_registry.address]
    settings.DOCKERSUPPORT_DOCKER_HUB_API = "http://127.0.0.7:9"  # nothing listens there
    connection = hub_connection()
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"retrying": 1}
    assert "Docker Hub's API (http://127.0.0.7:9) cannot be reached" in reason(image)


def test_a_tag_already_gone_is_as_good_as_deleted(hub):
    connection = hub_connection()
    hub.push("acme/app", D1, "build-1")
    hub.answers[("DELETE", "/v2/repositories/")] = Answer(404, {"Content-Type": "application/json"},
                                                          b'{"message": "httperror 404: tag not found"}')
    gone_repository = tombstone(connection, "acme/vanished", "build-1", D2)
    image = tombstone(connection, "acme/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 2}
    assert reason(image).startswith("tag 'build-1' was already gone from Docker Hub (DELETE "
                                    "/v2/repositories/acme/app/tags/build-1/: HTTP 404)")
    assert reason(gone_repository).startswith("no tag of acme/vanished on Docker Hub points to it any more")


def test_a_repository_the_api_hides_from_an_account_is_refused_and_the_next_connection_deletes(hub, hub_registry):
    """Docker Hub answers 404 for a private repository the account cannot see: not "gone" while the registry
    still holds it."""
    repository = f"acme/app-{uuid.uuid4().hex[:8]}"
    digest = hub_registry.push_image(repository, "build-1")
    hub.push(repository, digest, "build-1")
    hub.unseen["other"] = {repository}
    parent = ProjectFactory(ident="org")
    other = hub_connection(project=ProjectFactory(ident="team", parent=parent), ident="other", username="other",
                           password=OTHER_PAT)
    pusher = hub_connection(project=parent, ident="pusher")
    image = tombstone(other, repository, "build-1", digest, connection=other)
    assert pending_deletions_process() == {"deleted": 1}
    assert hub.deleted == [(repository, "build-1")]
    assert reason(image).startswith(
        f"tag 'build-1' deleted through Docker Hub's API (DELETE /v2/repositories/{repository}/tags/build-1/: HTTP "
        f"204), with connection {pusher}; refused before: connection {other}: Docker Hub's API knows no repository "
        f"{repository} (HTTP 404) while the registry holds 1 tag(s) of it: the account 'other' cannot see the "
        "repository through the API")


def test_a_tag_the_api_says_is_gone_while_the_registry_has_it_is_refused_not_gone(hub, hub_registry):
    repository = f"acme/app-{uuid.uuid4().hex[:8]}"
    digest = hub_registry.push_image(repository, "build-1")
    hub_registry.tag(repository, digest, "build-2")
    hub.push(repository, digest, "build-1", "build-2")
    not_found = Answer(404, {"Content-Type": "application/json"}, b'{"message": "httperror 404: tag not found"}')
    with open_registry(hub_connection()) as registry:
        assert registry.tags_by_digest(repository) == {digest: {"build-1", "build-2"}}
        namespace, name = repository.split("/")
        hub.answers[("GET", f"/v2/namespaces/{namespace}/repositories/{name}/tags/build-1")] = not_found
        hub.answers[("DELETE", f"/v2/repositories/{repository}/tags/build-2/")] = not_found
        answers = {ref.tag: answer for ref, answer in registry.delete(
            repository, [ImageRef(tag="build-1"), ImageRef(tag="build-2")]).items()}
    assert {tag: answer.result for tag, answer in answers.items()} == {"build-1": "refused", "build-2": "refused"}
    assert answers["build-1"].reason == (f"tag 'build-1' was already gone from Docker Hub (HTTP 404), yet the registry "
                                         f"still has {repository}:build-1: the account 'ci' cannot see it through "
                                         "Docker Hub's API")
    assert answers["build-2"].reason.startswith(f"tag 'build-2' was already gone from Docker Hub (DELETE "
                                                f"/v2/repositories/{repository}/tags/build-2/: HTTP 404), yet")
    assert hub.deleted == []


def test_a_tag_read_without_a_digest_is_not_deleted(hub):
    hub.push("acme/app", D1, "build-1")
    with open_registry(hub_connection()) as registry:
        registry.tags_by_digest("acme/app")
        hub.answers[("GET", "/v2/namespaces/acme/repositories/app/tags/build-1")] = Answer(
            200, {"Content-Type": "application/json"}, b'{"name": "build-1", "digest": null, "images": []}')
        [answer] = registry.delete("acme/app", [ImageRef(digest=D1)]).values()
    assert (answer.result, answer.reason) == ("failed", "Docker Hub's API gave tag 'build-1' of acme/app without a "
                                                        "digest: which image it points to now is unknown, so it was "
                                                        "not deleted")
    assert hub.deleted == [] and not [r for r in hub.requests if r.method == "DELETE"]


# --- Where credentials go ------------------------------------------------------------------------


def test_a_next_link_to_another_host_is_asked_of_the_hub_itself(hub, hostile):
    hub.next_base = hostile.url
    connection = hub_connection()
    hub.push("acme/app", D2, *[f"other-{n:03}" for n in range(120)])
    hub.push("acme/app", D1, "zz-build-1")  # on the second page
    tombstone(connection, "acme/app", "zz-build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    assert hostile.requests == []
    assert "/v2/namespaces/acme/repositories/app/tags?page_size=100&page=2" in [r.path for r in hub.requests]


def test_a_next_link_elsewhere_only_says_that_the_listing_has_a_next_page(hub):
    hub.next_base = hub.url + "/v2/auth/token#"
    connection = hub_connection()
    hub.push("acme/app", D2, *[f"other-{n:03}" for n in range(120)])
    image = tombstone(connection, "acme/app", "other-000", D2)
    assert pending_deletions_process() == {"deleted": 1}
    assert "only tag 'other-000' was removed" in reason(image) and hub.deleted == [("acme/app", "other-000")]
    assert [r.path for r in hub.requests if r.path.startswith("/v2/namespaces/")][:2] == [
        "/v2/namespaces/acme/repositories/app/tags?page_size=100&page=1",
        "/v2/namespaces/acme/repositories/app/tags?page_size=100&page=2"]
    assert [r.method for r in hub.requests if r.path == "/v2/auth/token"] == ["POST"]  # the login alone


def test_a_redirect_to_another_host_is_followed_without_credentials(hub, hostile):
    hub.answers[("GET", "/v2/namespaces/")] = Answer(302, {"Location": f"{hostile.url}/elsewhere"})
    connection = hub_connection()
    image = tombstone(connection, "acme/app", "build-1", D1)
    pending_deletions_process()
    assert [r.path for r in hostile.requests] == ["/elsewhere"]
    assert hostile.authorizations() == [] and PAT not in str(hostile.requests[0])
    assert PAT not in reason(image)


# --- Connection test -----------------------------------------------------------------------------


def test_the_connection_test_logs_in_to_the_registry_and_says_whether_the_api_gives_a_token(registry, settings):
    settings.DOCKERSUPPORT_DOCKER_HUB_REGISTRIES = [registry.address]  # the real registry stands for Docker Hub's
    with DockerHubApi(accounts={registry.username: {registry.password: "repo:admin"}}) as api:
        settings.DOCKERSUPPORT_DOCKER_HUB_API = api.url
        connection = RegistryConnectionFactory(registry=registry.address, username=registry.username,
                                               password=registry.password)
        result = connection_test(connection)
        assert result.ok, result.error
        assert result.verified[-1] == (f"Docker Hub's API ({api.url}) gave '{registry.username}' a token for deleting "
                                       "tags (a personal access token needs the scope Read, Write, Delete for that)")
        api.accounts.clear()
        result = connection_test(connection)
    assert result.ok  # builds log in to the registry alone
    assert result.verified[-1] == (f"clean-up cannot delete tags with this connection: Docker Hub's API refused the "
                                   f"credentials of '{registry.username}' (POST /v2/auth/token): HTTP 401 Incorrect "
                                   "authentication credentials")
    assert registry.password not in result.as_text()
