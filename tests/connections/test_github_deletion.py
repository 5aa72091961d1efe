"""ghcr.io clean-up through GitHub's REST API (the registry refuses manifest DELETE): package versions listed and
deleted with the connection's token, a multi-platform image's untagged children with its index, under clean-up's
rules (builds.cleanup.registry) — against tests/harness/github_packages.py: a local double of exactly the documented
requests and answers, beside Debian's docker-registry standing for ghcr.io (whose manifests clean-up reads)."""

import json
import logging
import os
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from builds.cleanup.registry import cleanup_run, pending_deletions_process
from builds.models import Build, PushedImage
from connections.registries import ImageRef, open_registry
from connections.services import connection_test
from tests.conftest import start
from tests.factories import BuildConfigurationFactory, BuildFactory, ProjectFactory, RegistryConnectionFactory
from tests.harness.github_packages import GhcrRegistry, GitHubPackages
from tests.harness.stand_in import Answer, StandIn

pytestmark = [pytest.mark.django_db, pytest.mark.services]
CI_TOKEN = "ghp_ciDeletePackages0123456789abcdef"
READ_TOKEN = "ghp_readerOnly0123456789abcdefabcd"
OTHER_TOKEN = "ghp_otherDeletePackages0123456789ab"  # may delete, but its user cannot see every package


@pytest.fixture(scope="module")
def ghcr():
    registry = start(GhcrRegistry({"reader": READ_TOKEN, "other": OTHER_TOKEN}, username="ci", password=CI_TOKEN))
    yield registry
    registry.stop()


@pytest.fixture
def github(ghcr, settings):
    tokens = {CI_TOKEN: ("ci", "delete:packages, read:packages, write:packages"),
              READ_TOKEN: ("reader", "read:packages, write:packages"),
              OTHER_TOKEN: ("other", "delete:packages, read:packages, write:packages")}
    with GitHubPackages(tokens=tokens, owners={"acme": "Organization", "ci": "User"}) as api:
        settings.DOCKERSUPPORT_GITHUB_API = api.url
        settings.DOCKERSUPPORT_GITHUB_REGISTRIES = [ghcr.address]
        yield api


@pytest.fixture
def package():
    return f"app-{uuid.uuid4().hex[:8]}"


def ghcr_connection(ghcr, **fields):
    return RegistryConnectionFactory(**{"registry": ghcr.address, "username": "ci", "password": CI_TOKEN, **fields})


def tombstone(project, ghcr, repository, tag, digest, **fields):
    return PushedImage.objects.create(
        project=project, configuration_ident="gone", build_number=fields.pop("build_number", 1), registry=ghcr.address,
        repository=repository, tag=tag, digest=digest, pushed_at=timezone.now(), cleanup_status="pending",
        next_attempt_at=timezone.now(), **fields)


def kept_build_pushed(project, ghcr, repository, tag, digest):
    configuration = BuildConfigurationFactory(project=project)
    PushedImage.objects.create(project=project, build=BuildFactory(configuration=configuration),
                               configuration_ident=configuration.ident, build_number=2, registry=ghcr.address,
                               repository=repository, tag=tag, digest=digest, pushed_at=timezone.now())


def reason(image) -> str:
    image.refresh_from_db()
    return image.cleanup_reason


def api_calls(github) -> list[str]:
    return [f"{r.method} {r.path}" for r in github.requests]


# --- Deleted -------------------------------------------------------------------------------------


def test_an_organizations_package_version_is_deleted_by_its_id(ghcr, github, package, caplog):
    caplog.set_level(logging.DEBUG)
    connection = ghcr_connection(ghcr)
    repository = f"acme/tools/{package}"  # a package name with a slash: one URL-encoded path segment
    digest = ghcr.push_image(repository, "build-1")
    number = github.push("acme", f"tools/{package}", digest, "build-1")
    image = tombstone(connection.project, ghcr, repository, "build-1", digest)
    assert pending_deletions_process() == {"deleted": 1}
    path = f"/orgs/acme/packages/container/tools%2F{package}/versions"
    assert reason(image) == (f"package version {number} deleted through GitHub's API (DELETE {path}/{number}: "
                             f"HTTP 204), with connection {connection}")
    assert api_calls(github) == ["GET /users/acme", f"GET {path}?per_page=100&page=1", f"DELETE {path}/{number}"]
    assert github.deleted == [("acme", f"tools/{package}", number)]
    for request in github.requests:
        assert request.headers["Authorization"] == f"Bearer {CI_TOKEN}"
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert CI_TOKEN not in caplog.text


def test_a_users_package_is_deleted_under_users(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    digest = ghcr.push_image(f"ci/{package}", "build-1")
    number = github.push("ci", package, digest, "build-1")
    tombstone(connection.project, ghcr, f"ci/{package}", "build-1", digest)
    assert pending_deletions_process() == {"deleted": 1}
    assert f"DELETE /users/ci/packages/container/{package}/versions/{number}" in api_calls(github)


def test_a_multi_platform_images_untagged_children_go_with_its_index(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    repository = f"acme/{package}"
    amd64, arm64 = ghcr.push_image(repository), ghcr.push_image(repository, platform="linux/arm64")
    index = ghcr.push_index(repository, "build-1", [amd64, arm64])
    ids = {digest: github.push("acme", package, digest) for digest in (amd64, arm64)}
    ids[index] = github.push("acme", package, index, "build-1")
    image = tombstone(connection.project, ghcr, repository, "build-1", index)
    assert pending_deletions_process() == {"deleted": 1}
    assert [number for _, _, number in github.deleted][0] == ids[index]  # the index before its children
    assert sorted(number for _, _, number in github.deleted) == sorted(ids.values())
    assert github.digests("acme", package) == {}
    text = reason(image)
    assert text.startswith(f"package version {ids[index]} deleted through GitHub's API")
    assert f"deleted with it: {min(amd64, arm64)} (child of index {index})" in text


def test_a_child_a_kept_build_pushed_stays_and_the_rest_goes(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    repository = f"acme/{package}"
    amd64, arm64 = ghcr.push_image(repository), ghcr.push_image(repository, platform="linux/arm64")
    index = ghcr.push_index(repository, "build-1", [amd64, arm64])
    ids = {digest: github.push("acme", package, digest) for digest in (amd64, arm64)}
    ids[index] = github.push("acme", package, index, "build-1")
    kept_build_pushed(connection.project, ghcr, repository, "", amd64)
    image = tombstone(connection.project, ghcr, repository, "build-1", index)
    assert pending_deletions_process() == {"deleted": 1}
    assert sorted(number for _, _, number in github.deleted) == sorted([ids[index], ids[arm64]])
    assert github.digests("acme", package) == {amd64: []}
    text = reason(image)
    assert f"deleted with it: {arm64} (child of index {index})" in text and amd64 not in text


def test_an_index_another_tagged_index_shares_children_with_keeps_them(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    repository = f"acme/{package}"
    amd64, arm64 = ghcr.push_image(repository), ghcr.push_image(repository, platform="linux/arm64")
    index = ghcr.push_index(repository, "build-1", [amd64, arm64])
    other = ghcr.push_index(repository, "stable", [amd64])
    ids = {digest: github.push("acme", package, digest) for digest in (amd64, arm64)}
    ids[index] = github.push("acme", package, index, "build-1")
    github.push("acme", package, other, "stable")
    tombstone(connection.project, ghcr, repository, "build-1", index)
    assert pending_deletions_process() == {"deleted": 1}
    assert sorted(number for _, _, number in github.deleted) == sorted([ids[index], ids[arm64]])
    assert set(github.digests("acme", package)) == {amd64, other}


# --- Kept ----------------------------------------------------------------------------------------


def test_a_shared_digest_a_protected_tag_and_a_foreign_tag_keep_the_version(ghcr, github, package, settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "release-*"
    connection = ghcr_connection(ghcr)
    repository = f"acme/{package}"
    shared, protected, foreign = (ghcr.push_image(repository, f"build-{n}") for n in (1, 2, 3))
    github.push("acme", package, shared, "build-1")
    github.push("acme", package, protected, "build-2", "release-2")
    github.push("acme", package, foreign, "build-3", "latest")
    kept_build_pushed(connection.project, ghcr, repository, "build-9", shared)
    images = [tombstone(connection.project, ghcr, repository, f"build-{n}", digest)
              for n, digest in ((1, shared), (2, protected), (3, foreign))]
    assert pending_deletions_process() == {"kept": 3}
    texts = [reason(image) for image in images]
    assert "which is kept, pushed the same digest" in texts[0]
    assert "protected tag 'release-2' (pattern 'release-*' of DOCKERSUPPORT_PROTECTED_TAGS)" in texts[1]
    assert "tag 'latest' also points to this digest and was not pushed by a deleted build" in texts[2]
    assert github.deleted == [] and not [r for r in github.requests if r.method == "DELETE"]


# --- Refused, retried, gone ----------------------------------------------------------------------


def test_a_token_without_delete_packages_is_refused_and_the_next_connection_deletes(ghcr, github, package):
    parent = ProjectFactory(ident="org")
    child = ProjectFactory(ident="team", parent=parent)
    reader = ghcr_connection(ghcr, project=child, ident="reader", username="reader", password=READ_TOKEN)
    pusher = ghcr_connection(ghcr, project=parent, ident="pusher")
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    number = github.push("acme", package, digest, "build-1")
    image = tombstone(child, ghcr, f"acme/{package}", "build-1", digest, connection=reader)
    assert pending_deletions_process() == {"deleted": 1}
    text = reason(image)
    path = f"/orgs/acme/packages/container/{package}/versions/{number}"
    assert text.startswith(f"package version {number} deleted through GitHub's API (DELETE {path}: HTTP 204), with "
                           f"connection {pusher}; refused before: connection {reader}: DELETE {path}: GitHub's API "
                           "refused the credentials: HTTP 403 You need at least delete:packages scope to perform this "
                           "action.; the token needs delete:packages")
    assert READ_TOKEN not in text and CI_TOKEN not in text


def test_a_bad_token_alone_ends_failed_with_githubs_words(ghcr, github, package):
    del github.tokens[READ_TOKEN]
    connection = ghcr_connection(ghcr, username="reader", password=READ_TOKEN)
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    github.push("acme", package, digest, "build-1")
    image = tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
    assert pending_deletions_process() == {"failed": 1}
    assert reason(image) == (f"no connection may delete it: connection {connection}: GET /users/acme: GitHub's API "
                             "refused the credentials: HTTP 401 Bad credentials")


SECONDARY_LIMIT = Answer(403, {"Content-Type": "application/json"}, json.dumps(  # without headers, as GitHub may
    {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
     "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}).encode())


@pytest.mark.parametrize("answer", [Answer(429), Answer(502), Answer(403, {"x-ratelimit-remaining": "0"}),
                                    SECONDARY_LIMIT])
@pytest.mark.parametrize("request_line", [("DELETE", "/orgs/"), ("GET", "/users/acme")])
def test_a_rate_limit_or_a_broken_api_is_retried_later(ghcr, github, package, answer, request_line):
    connection = ghcr_connection(ghcr)
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    github.push("acme", package, digest, "build-1")
    github.answers[request_line] = answer
    image = tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
    assert pending_deletions_process() == {"retrying": 1}
    image.refresh_from_db()
    assert (image.cleanup_status, image.cleanup_attempts) == ("pending", 1)
    assert f"HTTP {answer.status}" in image.cleanup_reason and github.digests("acme", package) == {digest: ["build-1"]}


def test_a_version_already_gone_is_as_good_as_deleted(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    digest = "sha256:" + uuid.uuid4().hex * 2  # gone from the registry too (404 there)
    number = github.push("acme", package, digest, "build-1")
    github.answers[("DELETE", "/orgs/")] = Answer(404, {"Content-Type": "application/json"},
                                                  b'{"message": "Package version not found."}')
    image = tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
    vanished = tombstone(connection.project, ghcr, "acme/never-listed", "build-1", digest)
    assert pending_deletions_process() == {"deleted": 2}
    assert reason(image).startswith(f"package version {number} was already gone (DELETE /orgs/acme/packages/container/"
                                    f"{package}/versions/{number}: HTTP 404)")
    assert reason(vanished).startswith("no version of package acme/never-listed has this digest: already deleted")


def test_a_package_the_tokens_user_cannot_see_is_refused_and_the_next_connection_deletes(ghcr, github, package):
    """GitHub answers 404 for a package the token's user cannot see: not "gone" while ghcr.io still holds it."""
    parent = ProjectFactory(ident="org")
    other = ghcr_connection(ghcr, project=ProjectFactory(ident="team", parent=parent), ident="other",
                            username="other", password=OTHER_TOKEN)
    pusher = ghcr_connection(ghcr, project=parent, ident="pusher")
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    number = github.push("acme", package, digest, "build-1")
    github.unseen["other"] = {("acme", package)}
    image = tombstone(other.project, ghcr, f"acme/{package}", "build-1", digest, connection=other)
    assert pending_deletions_process() == {"deleted": 1}
    assert github.deleted == [("acme", package, number)]
    text = reason(image)
    assert text.startswith(f"package version {number} deleted through GitHub's API (DELETE /orgs/acme/packages/"
                           f"container/{package}/versions/{number}: HTTP 204), with connection {pusher}; refused "
                           f"before: connection {other}: GitHub's API knows no package acme/{package} (HTTP 404) "
                           "while the registry holds 1 tag(s) of it: this token cannot see the package")
    assert OTHER_TOKEN not in text and CI_TOKEN not in text


def test_a_version_the_api_does_not_list_or_call_gone_while_the_registry_holds_it_is_refused(ghcr, github, package):
    repository = f"acme/{package}"
    unlisted, missing = ghcr.push_image(repository, "build-1"), ghcr.push_image(repository, "build-2")
    github.push("acme", package, missing, "build-2")  # the API's listing lags: build-1 is not in it yet
    github.answers[("DELETE", "/orgs/")] = Answer(404, {"Content-Type": "application/json"},
                                                  b'{"message": "Package version not found."}')
    with open_registry(ghcr_connection(ghcr)) as registry:
        registry.tags_by_digest(repository)
        answers = registry.delete(repository, [ImageRef(digest=unlisted), ImageRef(digest=missing)])
    assert [answer.result for answer in answers.values()] == ["refused", "refused"]
    assert answers[ImageRef(digest=unlisted)].reason == (
        f"this token cannot see the package version of {repository}@{unlisted} (or GitHub's API does not list it "
        f"yet): no version of package {repository} has this digest: already deleted according to GitHub's API, yet "
        "the registry still holds it")
    assert "package version" in answers[ImageRef(digest=missing)].reason and "HTTP 404" in \
        answers[ImageRef(digest=missing)].reason
    assert github.deleted == []


def test_a_tag_on_the_registry_the_apis_metadata_lacks_still_keeps_the_version(ghcr, github, package, settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "release-*"
    connection = ghcr_connection(ghcr)
    repository = f"acme/{package}"
    tagged, protected = ghcr.push_image(repository, "build-1"), ghcr.push_image(repository, "build-2")
    ghcr.tag(repository, tagged, "latest")
    ghcr.tag(repository, protected, "release-2")
    github.push("acme", package, tagged, "build-1")  # the API's metadata knows neither latest nor release-2
    github.push("acme", package, protected, "build-2")
    images = [tombstone(connection.project, ghcr, repository, f"build-{n}", digest)
              for n, digest in ((1, tagged), (2, protected))]
    assert pending_deletions_process() == {"kept": 2}
    assert "tag 'latest' also points to this digest" in reason(images[0])
    assert "protected tag 'release-2'" in reason(images[1])
    assert github.deleted == [] and not [r for r in github.requests if r.method == "DELETE"]
    with open_registry(connection) as registry:
        assert registry.tags_by_digest(repository) == {tagged: {"build-1", "latest"},
                                                       protected: {"build-2", "release-2"}}


# --- Where the token goes ------------------------------------------------------------------------


def test_a_netrc_for_the_apis_host_does_not_replace_the_token(ghcr, github, package, tmp_path, monkeypatch):
    """requests puts ~/.netrc's credentials in place of an Authorization header given without `auth=`."""
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {github.stand_in.host} login netrc-user password netrc-secret\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    connection = ghcr_connection(ghcr)
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    number = github.push("acme", package, digest, "build-1")
    tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
    assert pending_deletions_process() == {"deleted": 1}
    assert github.deleted == [("acme", package, number)]
    assert {request.headers.get("Authorization") for request in github.requests} == {f"Bearer {CI_TOKEN}"}


def test_link_pages_naming_another_host_are_asked_of_the_api_itself(ghcr, github, package):
    with StandIn("127.0.0.8", lambda recorded: Answer(200, {"Content-Type": "application/json"}, b"[]")) as hostile:
        github.next_base, github.page_size = hostile.url, 1
        connection = ghcr_connection(ghcr)
        digest = ghcr.push_image(f"acme/{package}", "build-1")
        github.push("acme", package, digest, "build-1")
        github.push("acme", package, ghcr.push_image(f"acme/{package}", "build-2"), "build-2")  # listed first
        tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
        assert pending_deletions_process() == {"deleted": 1}
    assert hostile.requests == []
    assert f"GET /orgs/acme/packages/container/{package}/versions?per_page=100&page=2" in api_calls(github)


def test_a_redirect_to_another_host_is_followed_without_the_token(ghcr, github, package):
    with StandIn("127.0.0.8", lambda recorded: Answer(404)) as hostile:
        github.answers[("GET", "/users/acme")] = Answer(301, {"Location": f"{hostile.url}/users/acme"})
        connection = ghcr_connection(ghcr)
        digest = ghcr.push_image(f"acme/{package}", "build-1")
        github.push("acme", package, digest, "build-1")
        image = tombstone(connection.project, ghcr, f"acme/{package}", "build-1", digest)
        assert pending_deletions_process() == {"failed": 1}
    assert [r.path for r in hostile.requests] == ["/users/acme"] and hostile.authorizations() == []
    assert CI_TOKEN not in str(hostile.requests)
    assert "GitHub's API knows no user or organization 'acme'" in reason(image)


# --- Directly, and the connection test -----------------------------------------------------------


def test_the_registry_lists_untagged_versions_and_refuses_tag_deletion(ghcr, github, package):
    digest = ghcr.push_image(f"acme/{package}", "build-1")
    child = ghcr.push_image(f"acme/{package}")
    github.push("acme", package, digest, "build-1")
    github.push("acme", package, child)
    with open_registry(ghcr_connection(ghcr)) as registry:
        assert not registry.deletes_by_tag
        assert registry.tags_by_digest(f"acme/{package}") == {digest: {"build-1"}, child: set()}
        assert registry.digest_of(f"acme/{package}", "build-1") == digest  # read from the registry
        with pytest.raises(ValueError):
            registry.delete(f"acme/{package}", [ImageRef(tag="build-1")])


def test_the_connection_test_says_whether_the_token_may_delete(ghcr, github):
    result = connection_test(ghcr_connection(ghcr))
    assert result.ok, result.error
    assert result.verified[-1] == ("GitHub's API accepted the token of 'ci' (scopes: delete:packages, read:packages, "
                                   "write:packages): clean-up can delete package versions")
    result = connection_test(ghcr_connection(ghcr, username="reader", password=READ_TOKEN))
    assert result.ok, result.error
    assert result.verified[-1] == ("GitHub's API accepted the token of 'reader' (scopes: read:packages, "
                                   "write:packages); without delete:packages clean-up cannot delete package versions "
                                   "with it")
    assert READ_TOKEN not in result.as_text() and CI_TOKEN not in result.as_text()
    del github.tokens[READ_TOKEN]  # a token GitHub's API does not take for a user's (an installation's, say)
    result = connection_test(ghcr_connection(ghcr, username="reader", password=READ_TOKEN))
    assert result.ok, result.error  # builds log in to the registry alone
    assert result.verified[-1] == ("GitHub's API did not say whose the token is (GET /user: HTTP 401 Bad credentials): "
                                   "whether it may delete package versions shows at clean-up")


# --- End to end: retention deletes the build, clean-up its pushed index ----------------------------


def test_retention_deletes_an_old_build_and_clean_up_its_multi_platform_image(ghcr, github, package):
    connection = ghcr_connection(ghcr)
    configuration = BuildConfigurationFactory(project=connection.project, keep_last=1, cleanup_pushed_images=True)
    repository = f"acme/{package}"
    builds = [BuildFactory(configuration=configuration, status=Build.Status.SUCCEEDED,
                           started_at=timezone.now() - timedelta(hours=n)) for n in (2, 1)]
    pushed = {}
    for build, tag in zip(builds, ("build-1", "build-2")):
        children = [ghcr.push_image(repository), ghcr.push_image(repository, platform="linux/arm64")]
        index = ghcr.push_index(repository, tag, children)
        for child in children:
            github.push("acme", package, child)
        github.push("acme", package, index, tag)
        pushed[tag] = (index, children)
        PushedImage.objects.create(project=connection.project, build=build, configuration_ident=configuration.ident,
                                   build_number=build.number, registry=ghcr.address, repository=repository, tag=tag,
                                   digest=index, pushed_at=timezone.now(), connection=connection)
    run = cleanup_run()
    assert (run.builds_deleted, run.images_deleted, run.images_failed) == (1, 1, 0)
    assert list(Build.objects.filter(configuration=configuration)) == [builds[1]]
    index, children = pushed["build-2"]
    assert set(github.digests("acme", package)) == {index, *children}
    old = PushedImage.objects.get(tag="build-1")
    assert old.cleanup_status == "deleted" and "child of index" in old.cleanup_reason
