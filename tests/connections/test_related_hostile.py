"""What a hostile build's tags or a registry's answers must not make clean-up take along: someone else's image
behind a cosign tag, an image a Content-Type calls an index, listings without end (connections/registries/related.py,
against the referrers-API stand-in, tests/harness/referrers_registry.py)."""

import hashlib
import logging
import uuid

import pytest

from builds.cleanup.related import related_plan
from connections.registries import RegistryError, related
from connections.registries.related import (
    COSIGN_SIGNATURE_ANNOTATION,
    MAX_DESCRIPTORS,
    manifest_read,
    referrers_find,
    repository_graph,
)
from connections.registries.v2 import RegistrySession
from tests.harness.referrers_registry import OCI_INDEX, OCI_MANIFEST, ReferrersRegistry

REPOSITORY = "team/app"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
SPDX = "application/spdx+json"


def blob(media_type: str, **extra) -> dict:
    return {"mediaType": media_type, "size": 1, "digest": "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
            **extra}


def image(*layers: dict, media_type: str | None = OCI_MANIFEST) -> dict:
    manifest = {"schemaVersion": 2, "config": blob("application/vnd.oci.image.config.v1+json"),
                "layers": list(layers) or [blob("application/vnd.oci.image.layer.v1.tar+gzip")]}
    return {"mediaType": media_type, **manifest} if media_type else manifest


def cosign_tag(digest: str, suffix: str) -> str:
    return digest.replace(":", "-") + suffix


@pytest.fixture
def registry():
    with ReferrersRegistry("127.0.0.21", page_size=2) as registry:
        yield registry


@pytest.fixture
def session(registry):
    session = RegistrySession(registry.address, registry.username, registry.password)
    yield session
    session.close()


def tags(registry) -> dict[str, str]:
    return dict(registry.tags[REPOSITORY])


# --- M6: cosign's tags take only cosign's artifacts ------------------------------------------------------

def test_a_cosign_tag_a_build_points_at_someone_elses_image_does_not_take_it_along(registry, session):
    victim = registry.push(REPOSITORY, image())  # deployed by digest elsewhere: no tag, nothing holds it here
    own = registry.push(REPOSITORY, image(), tag="build-5")
    registry.tags[REPOSITORY][cosign_tag(own, ".sig")] = victim
    lookup = referrers_find(session, REPOSITORY, own, tags=tags(registry))
    assert lookup.accepted == {}
    assert "does not look like cosign's .sig artifact" in lookup.refused[victim]
    current = {tag: digest for tag, digest in tags(registry).items() if tag != "build-5"}
    plan = related_plan([own], {}, repository_graph(session, REPOSITORY, wanted=[own], tags=current))
    assert [deletion.digest for deletion in plan.deletions] == [own]


@pytest.mark.parametrize(("suffix", "layer"), [
    (".sig", blob(SIMPLESIGNING)),
    (".att", blob(DSSE)),
    (".sbom", blob(SPDX)),
    (".sbom", blob("application/vnd.cyclonedx+json")),
    (".att", blob(DSSE, annotations={COSIGN_SIGNATURE_ANNOTATION: ""})),
    (".sig", blob("application/octet-stream", annotations={COSIGN_SIGNATURE_ANNOTATION: "MEUCIQ..."})),
])
def test_cosigns_own_artifacts_are_taken_as_referrers_by_their_tag(registry, session, suffix, layer):
    subject = registry.push(REPOSITORY, image(), tag="1.0")
    artifact = registry.push(REPOSITORY, image(layer, dict(layer, digest="sha256:" + "1" * 64)))
    registry.tags[REPOSITORY][cosign_tag(subject, suffix)] = artifact
    lookup = referrers_find(session, REPOSITORY, subject, tags=tags(registry))
    assert lookup.accepted == {artifact: f"tag {cosign_tag(subject, suffix)}"}


@pytest.mark.parametrize(("suffix", "layers"), [
    (".att", [blob(SIMPLESIGNING)]),  # a signature under the attestation's tag
    (".sig", [blob(SIMPLESIGNING), blob("application/vnd.oci.image.layer.v1.tar")]),  # an image with one such layer
    (".sbom", [blob("application/vnd.oci.image.layer.v1.tar", annotations={"org.example": "x"})]),
])
def test_a_manifest_under_a_cosign_tag_that_is_not_that_kind_of_artifact_is_refused(registry, session, suffix,
                                                                                     layers):
    subject = registry.push(REPOSITORY, image(), tag="1.0")
    other = registry.push(REPOSITORY, image(*layers))
    registry.tags[REPOSITORY][cosign_tag(subject, suffix)] = other
    lookup = referrers_find(session, REPOSITORY, subject, tags=tags(registry))
    assert lookup.accepted == {} and f"cosign's {suffix} artifact" in lookup.refused[other]


# --- L3: what is an index is said by the body that was hashed ---------------------------------------------

def test_an_image_without_media_type_is_no_index_whatever_its_content_type(registry, session):
    own = registry.push(REPOSITORY, image(), tag="build-5")
    victim = registry.push(REPOSITORY, image(media_type=None))
    media_type, body = registry.manifests[REPOSITORY][victim]
    registry.manifests[REPOSITORY][victim] = (OCI_INDEX, body)  # the registry says index; the body does not
    registry.tags[REPOSITORY][cosign_tag(own, "")] = victim  # as the referrers tag of the build's own image
    assert manifest_read(session, REPOSITORY, victim).is_index is False
    current = {tag: digest for tag, digest in tags(registry).items() if tag != "build-5"}
    plan = related_plan([own], {}, repository_graph(session, REPOSITORY, wanted=[own], tags=current))
    assert [deletion.digest for deletion in plan.deletions] == [own]


def test_a_body_without_media_type_that_lists_manifests_is_an_index(registry, session):
    child = registry.push(REPOSITORY, image())
    index = registry.push(REPOSITORY, {"schemaVersion": 2,
                                       "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}]})
    media_type, body = registry.manifests[REPOSITORY][index]
    registry.manifests[REPOSITORY][index] = ("application/json", body)
    manifest = manifest_read(session, REPOSITORY, index)
    assert manifest.is_index and manifest.children == (child,)


# --- L2: listings are bounded, de-duplicated, and summed up in one warning ------------------------------

def test_an_index_of_more_than_max_descriptors_is_refused_before_anything_is_read(registry, session):
    entries = [{"mediaType": OCI_MANIFEST, "size": 1, "digest": "sha256:" + hashlib.sha256(b"%d" % n).hexdigest()}
               for n in range(MAX_DESCRIPTORS + 1)]
    index = registry.push(REPOSITORY, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, tag="1")
    with pytest.raises(RegistryError, match=f"more than {MAX_DESCRIPTORS}"):
        repository_graph(session, REPOSITORY, wanted=[index], tags={})
    assert [r.path for r in registry.requests if r.method == "GET" and "/manifests/" in r.path][-1].endswith(index)


def test_referrers_listed_beyond_max_reads_stop_the_listing_before_any_is_read(registry, session, monkeypatch):
    monkeypatch.setattr(related, "MAX_READS", 5)
    subject = registry.push(REPOSITORY, image(), tag="1.0")
    listed = ["sha256:" + hashlib.sha256(b"%d" % n).hexdigest() for n in range(12)]
    registry.extra_referrers[subject] = [{"mediaType": OCI_MANIFEST, "digest": d, "size": 1} for d in listed]
    with pytest.raises(RegistryError, match="more than 5"):
        referrers_find(session, REPOSITORY, subject)
    pages = [r for r in registry.requests if "/referrers/" in r.path and "Authorization" in r.headers]
    assert len(pages) == 3  # 2 a page: stopped at the first page past 5, not at the 6th page
    assert not any("/manifests/" in r.path and d in r.path for r in registry.requests for d in listed)


def test_repeated_and_malformed_descriptors_are_listed_once_and_warned_of_once(registry, session, caplog):
    subject = registry.push(REPOSITORY, image(), tag="1.0")
    signature = registry.push(REPOSITORY, {**image(blob(SIMPLESIGNING)),
                                           "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}})
    again = {"mediaType": OCI_MANIFEST, "digest": signature, "size": 1}
    registry.extra_referrers[subject] = [again, again, *({"digest": f"sha256:../{n}"} for n in range(50))]
    with caplog.at_level(logging.WARNING, logger=related.__name__):
        lookup = referrers_find(session, REPOSITORY, subject)
    assert lookup.accepted == {signature: "the referrers API"}
    [warning] = [r.getMessage() for r in caplog.records if "well-formed digest" in r.getMessage()]
    assert "50 descriptor(s)" in warning
