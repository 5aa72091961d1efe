"""Clean-up with the related modules wired in (scratch: proposed for builds/cleanup/registry.py's integration)."""

import pytest
from django.utils import timezone

from builds.cleanup.registry import pending_deletions_process
from builds.models import PushedImage
from tests.e2e.test_cleanup_related import Pusher, cosign_tag
from tests.e2e.test_cleanup_trust import pending, repo
from tests.e2e.test_server_cleanup import manifest_status
from tests.factories import BuildConfigurationFactory, BuildFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def project(registry, transactional_db):
    project = ProjectFactory(ident="acme")
    RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                              password=registry.password)
    return project


def test_a_deleted_builds_index_goes_with_its_children_and_signatures(project, registry):
    pusher = Pusher(registry, repo())
    amd64, arm64 = pusher.image("amd64"), pusher.image("arm64")
    index = pusher.index([amd64, arm64], "build-1")
    artifact = pusher.signature(amd64)
    tag_index = pusher.referrers_tag_index(amd64, [artifact])
    cosign = pusher.signature(None)
    pusher.tag(cosign, cosign_tag(index, ".sig"))
    image = pending(project, registry.address, pusher.repository, "build-1", index["digest"])
    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert "deleted with it: " in image.cleanup_reason and f"referrer of {amd64['digest']}" in image.cleanup_reason
    for d in (index, amd64, arm64, artifact, tag_index, cosign):
        assert manifest_status(registry, pusher.repository, d["digest"]) == 404


def test_a_child_of_a_kept_builds_untagged_index_stays(project, registry):
    configuration = BuildConfigurationFactory(project=project, ident="app")
    kept = BuildFactory(configuration=configuration, number=9, status="succeeded")
    pusher = Pusher(registry, repo())
    amd64 = pusher.image("amd64")
    pusher.tag(amd64, "build-8-amd64")
    index = pusher.index([amd64], "moving")
    PushedImage.objects.create(build=kept, project=project, configuration_ident="app", build_number=9,
                               registry=registry.address, repository=pusher.repository, tag="moving",
                               digest=index["digest"], pushed_at=timezone.now())
    pusher.tag(pusher.image("arm64"), "moving")  # the tag moved on: the kept build's index is untagged now
    image = pending(project, registry.address, pusher.repository, "build-8-amd64", amd64["digest"],
                    configuration_ident="app", build_number=8)
    assert pending_deletions_process() == {"kept": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == f"index {index['digest']}, which stays, references it"
    assert manifest_status(registry, pusher.repository, amd64["digest"]) == 200
