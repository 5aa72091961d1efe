"""What deleting a digest takes along and what it must leave, planned on a registry's graph (no registry here):
indexes and their children, subjects and their referrers, the referrers and cosign tags, and the safe order."""

from builds.cleanup.related import related_deletions_run, related_plan, related_summary
from connections.registries import Deletion, DeletionResult
from connections.registries.related import RelatedGraph


def digest(name: str) -> str:
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def tag_of(subject: str, suffix: str = "") -> str:
    return subject.replace(":", "-") + suffix


INDEX, AMD64, ARM64 = digest("index"), digest("amd64"), digest("arm64")
SIG, SIG_OF_SIG, COSIGN, TAG_INDEX = digest("sig"), digest("sig-of-sig"), digest("cosign"), digest("tag-index")
OTHER_INDEX = digest("other-index")


def multi_platform(**extra) -> RelatedGraph:
    """An index of two platforms, tagged `1.0`; a signature of the amd64 manifest, listed by its referrers tag
    index, and a cosign signature tagged for the amd64 manifest."""
    tags = {"1.0": INDEX, tag_of(AMD64): TAG_INDEX, tag_of(AMD64, ".sig"): COSIGN, **extra.pop("tags", {})}
    children = {INDEX: [AMD64, ARM64], TAG_INDEX: [SIG], **extra.pop("children", {})}
    referrers = {AMD64: [SIG, COSIGN], **extra.pop("referrers", {})}
    return RelatedGraph(children=children, referrers=referrers, tags=tags)


def order(plan) -> list[list[str]]:
    return [[item.digest for item in stage] for stage in plan.stages]


def test_an_index_goes_whole_first_then_its_children_then_their_referrers_then_the_tag_index():
    plan = related_plan([INDEX], {}, multi_platform())
    assert order(plan) == [[INDEX], sorted([AMD64, ARM64]), sorted([COSIGN, SIG]), [TAG_INDEX]]
    assert plan.kept == {}
    why = {item.digest: item.why for item in plan.deletions}
    assert why[AMD64] == f"child of index {INDEX}"
    assert why[SIG] == f"referrer of {AMD64}"
    assert why[COSIGN] == f"tag '{tag_of(AMD64, '.sig')}' of {AMD64}"
    assert why[TAG_INDEX] == f"referrers tag index of {AMD64}"
    assert {item.root for item in plan.deletions} == {INDEX}
    tag_index = next(item for item in plan.deletions if item.digest == TAG_INDEX)
    assert set(tag_index.after) == {AMD64, SIG, COSIGN}  # the listing outlives the referrers


def test_an_index_kept_while_one_of_its_children_is_asked_keeps_the_child():
    graph = multi_platform()
    plan = related_plan([AMD64], {INDEX: "build app #7, which is kept, pushed the same digest"}, graph)
    assert plan.stages == []
    assert plan.kept[AMD64] == f"index {INDEX}, which stays, references it"
    assert set(plan.kept) == {AMD64, SIG, COSIGN, TAG_INDEX}  # and what the child holds stays with it


def test_a_child_of_an_index_that_a_tag_keeps_stays_though_nothing_else_keeps_it():
    # No kept build: the index stays because its tag `1.0` is not the deleted build's.
    plan = related_plan([ARM64], {}, multi_platform())
    assert plan.stages == [] and plan.kept == {ARM64: f"index {INDEX}, which stays, references it"}


def test_a_child_that_another_index_in_use_references_stays_and_the_others_go():
    graph = multi_platform(tags={"old": OTHER_INDEX}, children={OTHER_INDEX: [ARM64]})
    plan = related_plan([INDEX], {}, graph)
    assert ARM64 not in [item.digest for item in plan.deletions]
    assert plan.kept == {ARM64: f"child of index {INDEX}: index {OTHER_INDEX}, which stays, references it"}
    assert [INDEX] == order(plan)[0] and AMD64 in order(plan)[1]


def test_a_child_that_is_kept_keeps_its_referrers_and_signatures():
    plan = related_plan([INDEX], {AMD64: "tag 'v1' is protected"}, multi_platform())
    assert order(plan) == [[INDEX], [ARM64]]
    assert plan.kept[AMD64] == f"child of index {INDEX}: tag 'v1' is protected"
    assert plan.kept[SIG] == f"referrer of {AMD64}: it is a referrer of {AMD64}, which stays"
    assert plan.kept[COSIGN].endswith(f"it is a referrer of {AMD64}, which stays")
    assert TAG_INDEX in plan.kept  # its tag is the kept subject's


def test_referrers_of_a_kept_digest_are_never_deleted_even_when_asked():
    # A deleted build pushed a signature of an image that stays.
    graph = RelatedGraph(referrers={AMD64: [SIG]}, tags={"1": AMD64})
    plan = related_plan([SIG], {}, graph)
    assert plan.stages == [] and plan.kept == {SIG: f"it is a referrer of {AMD64}, which stays"}


def test_referrers_of_referrers_go_with_the_subject_to_a_bounded_depth():
    graph = RelatedGraph(referrers={AMD64: [SIG], SIG: [SIG_OF_SIG]})
    assert order(related_plan([AMD64], {}, graph)) == [[AMD64], [SIG], [SIG_OF_SIG]]
    assert order(related_plan([AMD64], {}, graph, depth=1)) == [[AMD64], [SIG]]


def test_a_referrer_with_a_tag_of_its_own_stays():
    graph = RelatedGraph(referrers={AMD64: [SIG]}, tags={"signature-of-release": SIG})
    plan = related_plan([AMD64], {}, graph)
    assert order(plan) == [[AMD64]]
    assert plan.kept == {SIG: f"referrer of {AMD64}: tag 'signature-of-release' points to it and stays"}


def test_the_referrers_and_cosign_tags_of_a_kept_subject_keep_what_they_point_to():
    # A hostile build re-tags the kept image's cosign signature as its own: `sha256-<own>.sig` → the signature.
    # The registry module takes a cosign tag's manifest as the tag names it: a referrer of both.
    own = digest("hostile")
    graph = RelatedGraph(referrers={AMD64: [COSIGN], own: [COSIGN]},
                         tags={"1": AMD64, tag_of(AMD64, ".sig"): COSIGN, tag_of(own, ".sig"): COSIGN})
    plan = related_plan([own], {}, graph)
    assert order(plan) == [[own]]
    assert COSIGN in plan.kept and f"it is a referrer of {AMD64}, which stays" in plan.kept[COSIGN]


def test_a_tag_index_keeps_nothing_it_lists_by_listing_alone():
    # The deleted subject's tag index lists a manifest that is no referrer of it: the listing deletes nothing.
    stranger = digest("stranger")
    graph = RelatedGraph(children={TAG_INDEX: [stranger]}, tags={tag_of(AMD64): TAG_INDEX})
    plan = related_plan([AMD64], {}, graph)
    assert order(plan) == [[AMD64], [TAG_INDEX]]


def test_an_asked_digest_kept_by_the_caller_stays_with_everything_it_holds():
    plan = related_plan([INDEX], {INDEX: "build app #9, which is kept, pushed the same digest"}, multi_platform())
    assert plan.stages == []
    assert plan.kept[INDEX] == "build app #9, which is kept, pushed the same digest"
    assert plan.kept[AMD64] == f"child of index {INDEX}: index {INDEX}, which stays, references it"
    assert set(plan.kept) == {INDEX, AMD64, ARM64, SIG, COSIGN, TAG_INDEX}


def test_a_cosign_tag_the_registry_module_refused_deletes_nothing():
    # `sha256-<hex>.sig` on a manifest that is no referrer of the subject (not in the graph's referrers), and
    # `sha256-<hex>` on a manifest that is no index: neither goes with the subject.
    graph = RelatedGraph(tags={tag_of(AMD64, ".sig"): COSIGN, tag_of(AMD64): SIG})
    plan = related_plan([AMD64], {}, graph)
    assert order(plan) == [[AMD64]]


def test_a_cycle_the_registry_claims_keeps_both():
    # Content addresses cannot make one (connections/registries/related.py checks every body); a graph can.
    graph = RelatedGraph(children={INDEX: [AMD64]}, referrers={AMD64: [INDEX]})
    plan = related_plan([INDEX], {}, graph)
    assert plan.stages == []
    assert "cannot be ordered" in plan.kept[INDEX] and "cannot be ordered" in plan.kept[AMD64]


def test_a_deletion_whose_predecessor_was_not_deleted_is_not_made():
    plan = related_plan([INDEX], {}, multi_platform())
    asked = []

    def delete(digests):
        asked.append(sorted(digests))
        return {d: Deletion.failed("HTTP 400") if d == AMD64 else Deletion.deleted("manifest deleted") for d in digests}

    outcomes = related_deletions_run(plan, delete)
    assert asked == [[INDEX], sorted([AMD64, ARM64])]  # the amd64 manifest stayed: its referrers are not touched
    # Blocked by a failed deletion: failed too (retried with it), never kept for good.
    assert {outcomes[d].result for d in (SIG, COSIGN, TAG_INDEX)} == {DeletionResult.FAILED}
    assert f"not deleted because {AMD64} was not (failed)" in outcomes[SIG].reason
    summary = related_summary(plan, outcomes, INDEX)
    assert summary.startswith(f"deleted with it: {ARM64} (child of index {INDEX}); not deleted with it: {AMD64}")


def test_an_index_that_could_not_be_deleted_keeps_its_children():
    plan = related_plan([INDEX], {}, multi_platform())
    outcomes = related_deletions_run(plan, lambda digests: {d: Deletion.refused("HTTP 403") for d in digests})
    assert outcomes[INDEX].result == DeletionResult.REFUSED
    # Refused with it: another connection may delete the index and then them.
    assert all(outcomes[d].result == DeletionResult.REFUSED for d in (AMD64, ARM64, SIG, COSIGN, TAG_INDEX))
