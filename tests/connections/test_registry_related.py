"""Referrers through the OCI referrers API, against a stand-in that speaks it as the distribution spec documents it
(tests/harness/referrers_registry.py): pages followed, and nothing a registry lists taken on its word — a referrer
whose manifest names another subject, a body that is not the digest asked, a digest that is not one."""

import hashlib
import json
import uuid

import pytest

from builds.cleanup.related import related_deletions_run, related_plan
from connections.registries import Deletion, RegistryError
from connections.registries.related import (
    index_children,
    manifest_read,
    referrers,
    referrers_find,
    repository_graph,
)
from connections.registries.v2 import RegistrySession
from tests.harness.referrers_registry import OCI_INDEX, OCI_MANIFEST, ReferrersRegistry
from tests.harness.stand_in import Answer

REPOSITORY = "team/app"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"


def image(**extra) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64,
                       "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 1,
                        "digest": "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()}], **extra}


def artifact(subject: str, artifact_type: str = SIGNATURE) -> dict:
    return image(artifactType=artifact_type, subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 100})


@pytest.fixture
def stand_in():
    with ReferrersRegistry("127.0.0.5", page_size=2) as registry:
        yield registry


@pytest.fixture
def session(stand_in):
    session = RegistrySession(stand_in.address, stand_in.username, stand_in.password)
    yield session
    session.close()


def referrer_requests(stand_in) -> list[str]:
    """The referrers API requests that carried the login (the first one, without, is answered by a challenge)."""
    return [r.path for r in stand_in.requests if "/referrers/" in r.path and "Authorization" in r.headers]


def test_the_referrers_api_is_read_page_by_page_and_each_referrer_checked(stand_in, session):
    subject = stand_in.push(REPOSITORY, image(), tag="1.0")
    found = [stand_in.push(REPOSITORY, artifact(subject, kind)) for kind in (SIGNATURE, SBOM, SIGNATURE)]
    stand_in.push(REPOSITORY, artifact("sha256:" + "9" * 64))  # another subject's
    lookup = referrers_find(session, REPOSITORY, subject)
    assert lookup.api is True
    assert sorted(lookup.accepted) == sorted(found)
    assert set(lookup.accepted.values()) == {"the referrers API"}
    pages = referrer_requests(stand_in)
    assert pages[0] == f"/v2/{REPOSITORY}/referrers/{subject}"
    assert len(pages) == 2 and pages[1].startswith(f"/v2/{REPOSITORY}/referrers/{subject}?n=2&last=sha256:")
    # Every request went with the login (the stand-in answers nothing else but its challenge).
    assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in stand_in.requests[1:])


def test_no_referrers_is_an_empty_index_not_a_404(stand_in, session):
    subject = stand_in.push(REPOSITORY, image())
    lookup = referrers_find(session, REPOSITORY, subject)
    assert lookup.api is True and lookup.accepted == {} and lookup.refused == {}


def test_a_lying_registry_listing_another_subjects_referrer_is_refused(stand_in, session):
    mine, theirs = stand_in.push(REPOSITORY, image(), tag="mine"), stand_in.push(REPOSITORY, image(), tag="theirs")
    their_signature = stand_in.push(REPOSITORY, artifact(theirs))
    stand_in.extra_referrers[mine] = [stand_in.descriptor(REPOSITORY, their_signature),
                                      {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 9}]
    lookup = referrers_find(session, REPOSITORY, mine)
    assert lookup.accepted == {}
    assert lookup.refused == {their_signature: f"listed by the referrers API, but its manifest names the subject "
                                               f"{theirs}"}
    assert referrers(session, REPOSITORY, theirs) == [their_signature]


def test_a_listed_digest_that_is_not_a_digest_is_never_requested(stand_in, session):
    subject = stand_in.push(REPOSITORY, image())
    stand_in.extra_referrers[subject] = [{"mediaType": OCI_MANIFEST, "digest": "sha256:../../other/manifests/x",
                                          "size": 1}]
    assert referrers(session, REPOSITORY, subject) == []
    assert not any("other" in r.path for r in stand_in.requests)


def test_a_manifest_whose_body_is_not_its_digest_is_refused(stand_in, session):
    index = stand_in.push(REPOSITORY, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}, tag="1.0")
    other = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1}]}
    stand_in.bodies[index] = json.dumps(other).encode()
    with pytest.raises(RegistryError, match="answered with a manifest whose digest is sha256:"):
        index_children(session, REPOSITORY, index)
    with pytest.raises(RegistryError, match="refused"):
        repository_graph(session, REPOSITORY, wanted=[index], tags={"1.0": index})


def test_a_next_page_outside_the_referrers_path_is_refused(stand_in, session):
    subject = stand_in.push(REPOSITORY, image())
    original = stand_in.stand_in.script

    def script(recorded):
        answer = original(recorded)
        if "/referrers/" in recorded.path:
            answer.headers["Link"] = f'</v2/{REPOSITORY}/manifests/{subject}>; rel="next"'
        return answer

    stand_in.stand_in.script = script
    with pytest.raises(RegistryError, match="next page is not under"):
        referrers(session, REPOSITORY, subject)


def test_a_subject_is_deleted_before_its_referrers_and_theirs(stand_in, session):
    subject = stand_in.push(REPOSITORY, image(), tag="build-7")
    signature = stand_in.push(REPOSITORY, artifact(subject))
    countersignature = stand_in.push(REPOSITORY, artifact(signature))
    kept = stand_in.push(REPOSITORY, image(), tag="latest")
    kept_signature = stand_in.push(REPOSITORY, artifact(kept))
    graph = repository_graph(session, REPOSITORY, wanted=[subject], tags=dict(stand_in.tags[REPOSITORY]))
    plan = related_plan([subject], {}, graph)
    outcomes = related_deletions_run(plan, lambda batch: {
        d: Deletion.deleted("") if session.delete_manifest(REPOSITORY, d) else Deletion.gone("") for d in batch})
    deleted = [r.path.rsplit("/", 1)[1] for r in stand_in.requests if r.method == "DELETE"]
    assert deleted == [subject, signature, countersignature]
    assert set(outcomes) == {subject, signature, countersignature}
    assert set(stand_in.manifests[REPOSITORY]) == {kept, kept_signature}


def test_manifests_are_read_with_every_type_accepted_and_their_subject_kept(stand_in, session):
    subject = stand_in.push(REPOSITORY, image())
    signature = stand_in.push(REPOSITORY, artifact(subject))
    manifest = manifest_read(session, REPOSITORY, signature)
    assert (manifest.media_type, manifest.subject, manifest.is_index) == (OCI_MANIFEST, subject, False)
    accept = [r.headers.get("Accept", "") for r in stand_in.requests if r.path.endswith(signature)][-1]
    assert OCI_INDEX in accept and "application/vnd.docker.distribution.manifest.list.v2+json" in accept


def index(*children: str) -> dict:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_INDEX if kind == "index" else OCI_MANIFEST, "digest": digest, "size": 1}
                          for kind, digest in children]}


def test_a_child_of_an_untagged_kept_index_or_of_an_index_inside_a_tagged_one_stays(stand_in, session):
    asked, deep = stand_in.push(REPOSITORY, image(), tag="build-3"), stand_in.push(REPOSITORY, image(), tag="build-4")
    kept_index = stand_in.push(REPOSITORY, index(("manifest", asked)))  # no tag: a kept build pushed it
    inner = stand_in.push(REPOSITORY, index(("manifest", deep)))
    stand_in.push(REPOSITORY, index(("index", inner)), tag="release")
    tags = dict(stand_in.tags[REPOSITORY])
    del tags["build-3"], tags["build-4"]  # the deleted builds' own tags go with what they asked
    graph = repository_graph(session, REPOSITORY, wanted=[asked, deep], kept=[kept_index], tags=tags)
    plan = related_plan([asked, deep], {kept_index: "build app #2, which is kept, pushed the same digest"}, graph)
    assert plan.stages == []
    assert plan.kept == {asked: f"index {kept_index}, which stays, references it",
                         deep: f"index {inner}, which stays, references it"}


def test_a_cosign_tag_on_an_index_or_on_the_subject_itself_is_refused(stand_in, session):
    subject = stand_in.push(REPOSITORY, image(), tag="1.0")
    someone_elses = stand_in.push(REPOSITORY, index(("manifest", stand_in.push(REPOSITORY, image()))), tag="2.0")
    tag = subject.replace(":", "-")
    stand_in.tags[REPOSITORY][tag + ".sig"] = someone_elses
    stand_in.tags[REPOSITORY][tag + ".att"] = subject
    lookup = referrers_find(session, REPOSITORY, subject, tags=dict(stand_in.tags[REPOSITORY]))
    assert lookup.accepted == {}
    assert lookup.refused == {someone_elses: f"tag {tag}.sig: cosign writes image manifests there, this is an index",
                              subject: f"tag {tag}.att: it is the subject itself"}


@pytest.mark.parametrize("status", [403, 404, 405])
def test_a_registry_without_the_api_is_read_through_its_tags_instead(stand_in, session, status):
    subject = stand_in.push(REPOSITORY, image(), tag="1.0")
    signature = stand_in.push(REPOSITORY, artifact(subject))
    stand_in.push(REPOSITORY, index(("manifest", signature)), tag=subject.replace(":", "-"))
    original = stand_in.stand_in.script
    stand_in.stand_in.script = lambda r: Answer(status) if "/referrers/" in r.path else original(r)
    lookup = referrers_find(session, REPOSITORY, subject)
    assert lookup.api is False
    assert lookup.accepted == {signature: f"tag {subject.replace(':', '-')}"}
