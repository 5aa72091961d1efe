"""What goes with a deletion, when a build or a registry is hostile or failing: a digest that is no digest is never
deleted, a deletion blocked by a passing error is tried again (never kept for ever), and a cosign tag a build points
at someone else's image does not take it along (builds/cleanup/related.py, through registry clean-up on the
referrers-API stand-in, tests/harness/referrers_registry.py)."""

import pytest
from django.utils import timezone

from builds.cleanup.registry import pending_deletions_process, pushed_images_retry
from builds.cleanup.related import NOT_A_DIGEST, related_deletions_run, related_plan
from builds.models import PushedImage
from connections.registries import Deletion, DeletionResult
from connections.registries.related import RelatedGraph
from tests.factories import ProjectFactory, RegistryConnectionFactory
from tests.harness.referrers_registry import OCI_INDEX, OCI_MANIFEST, ReferrersRegistry, _error

pytestmark = pytest.mark.django_db
INDEX, CHILD = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def image(n: int) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + f"{n}" * 64,
                       "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + "f" * 64,
                        "size": 3}]}


def tombstone(project, address: str, repository: str, tag: str, digest: str) -> PushedImage:
    return PushedImage.objects.create(
        project=project, configuration_ident="gone", build_number=1, registry=address, repository=repository, tag=tag,
        digest=digest, pushed_at=timezone.now(), cleanup_status=PushedImage.CleanupStatus.PENDING,
        next_attempt_at=timezone.now())


# --- H1: only digests go into DELETE URLs ---------------------------------------------------------------

@pytest.mark.parametrize("wanted", ["../../victim/app/manifests/" + CHILD, "sha256:" + "A" * 64, "latest", ""])
def test_a_wanted_digest_that_is_not_one_is_kept_and_nothing_is_deleted_by_it(wanted):
    plan = related_plan([wanted], {}, RelatedGraph(children={wanted: [CHILD]}, referrers={wanted: [CHILD]}))
    assert plan.stages == [] and plan.kept == {wanted: NOT_A_DIGEST}


def test_a_child_or_referrer_that_is_not_a_digest_is_left_out():
    graph = RelatedGraph(children={INDEX: ["sha256:../../x", CHILD]}, referrers={INDEX: ["sha256:.."]})
    plan = related_plan([INDEX], {}, graph)
    assert [deletion.digest for deletion in plan.deletions] == [INDEX, CHILD]


# --- L1: a deletion blocked by another is recorded as that one was -----------------------------------

@pytest.mark.parametrize(("blocker", "recorded"), [
    (Deletion.retry("HTTP 503"), DeletionResult.RETRY),
    (Deletion.failed("HTTP 400"), DeletionResult.FAILED),
    (Deletion.refused("HTTP 403"), DeletionResult.REFUSED),
    (Deletion.kept("ECR: a manifest list refers to it"), DeletionResult.KEPT),
])
def test_a_child_blocked_by_its_index_is_recorded_as_the_index_was(blocker, recorded):
    plan = related_plan([INDEX], {}, RelatedGraph(children={INDEX: [CHILD]}))
    outcomes = related_deletions_run(plan, lambda digests: {d: blocker for d in digests})
    assert outcomes[INDEX] == blocker
    assert outcomes[CHILD].result == recorded
    assert outcomes[CHILD].reason == f"child of index {INDEX}: not deleted because {INDEX} was not ({blocker.result})"


class Unavailable(ReferrersRegistry):
    """Answers the DELETE of `broken` digests 503, as a registry under maintenance."""

    broken: set[str] = set()

    def _manifest(self, method, name, reference):
        if method == "DELETE" and reference in self.broken:
            return _error(503, "UNAVAILABLE", "try later")
        return super()._manifest(method, name, reference)


def test_a_pushed_image_blocked_by_a_passing_error_of_its_index_is_retried_not_kept_for_ever():
    with Unavailable("127.0.0.22") as registry:
        project = ProjectFactory(ident="acme")
        RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                                  password=registry.password)
        child = registry.push("team/app", image(6), tag="b1-amd64")
        index = registry.push("team/app", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": 1}]}, tag="b2")
        registry.broken = {index}
        first = tombstone(project, registry.address, "team/app", "b1-amd64", child)
        second = tombstone(project, registry.address, "team/app", "b2", index)
        pending_deletions_process()
        first.refresh_from_db()
        assert first.cleanup_status == PushedImage.CleanupStatus.PENDING and first.cleanup_attempts == 1
        assert f"not deleted because {index} was not (retry)" in first.cleanup_reason
        registry.broken = set()
        assert pushed_images_retry([first, second]) == 2  # the admin's retry reaches it (it would not, kept)
        pending_deletions_process()
        first.refresh_from_db()
        assert first.cleanup_status == PushedImage.CleanupStatus.DELETED
        assert registry.manifests["team/app"] == {}


# --- M6: cosign's tags take only cosign's artifacts along ----------------------------------------------

def test_a_cosign_tag_a_build_points_at_another_image_does_not_delete_that_image():
    with ReferrersRegistry("127.0.0.23") as registry:
        project = ProjectFactory(ident="acme")
        RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                                  password=registry.password)
        victim = registry.push("shared/app", image(3))  # deployed by its digest; no tag, nothing recorded
        own = registry.push("shared/app", image(5), tag="acme-5")
        registry.tags["shared/app"][own.replace(":", "-") + ".sig"] = victim
        pushed = tombstone(project, registry.address, "shared/app", "acme-5", own)
        pending_deletions_process()
        pushed.refresh_from_db()
        assert pushed.cleanup_status == PushedImage.CleanupStatus.DELETED
        assert set(registry.manifests["shared/app"]) == {victim}
        assert [r.path for r in registry.requests if r.method == "DELETE"] == [f"/v2/shared/app/manifests/{own}"]
