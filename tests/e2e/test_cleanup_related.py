"""Multi-platform images and referrers on the real registry (Debian's docker-registry, distribution 2.8): an
index of two platforms, a signature whose `subject` is one of them — listed, as OCI 1.1 clients do on a registry
without the referrers API, by the referrers tag `sha256-<hex>` — and a cosign signature tag `sha256-<hex>.sig`,
all pushed through the registry's HTTP API; then read, planned and deleted by clean-up's modules."""

import hashlib
import json
import uuid

import pytest
import requests

from builds.cleanup.related import related_deletions_run, related_plan, related_summary
from connections.registries import Deletion
from connections.registries.related import (
    index_children,
    referrers,
    referrers_find,
    repository_graph,
)
from connections.registries.v2 import RegistrySession
from tests.e2e.test_server_cleanup import manifest_status

pytestmark = [pytest.mark.e2e]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


class Pusher:
    """Pushes blobs and manifests through the registry's HTTP API with its Basic login."""

    def __init__(self, registry, repository):
        self.registry, self.repository = registry, repository
        self.auth = (registry.username, registry.password)

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = requests.post(f"{self.registry.url}/v2/{self.repository}/blobs/uploads/", auth=self.auth, timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        location = location if location.startswith("http") else self.registry.url + location
        done = requests.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", data=data, auth=self.auth,
                            headers={"Content-Type": "application/octet-stream"}, timeout=10)
        assert done.status_code == 201, done.text
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def manifest(self, manifest: dict, tag: str | None = None) -> dict:
        body = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = requests.put(f"{self.registry.url}/v2/{self.repository}/manifests/{tag or digest}", data=body,
                                auth=self.auth, headers={"Content-Type": manifest["mediaType"]}, timeout=10)
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == digest
        return {"mediaType": manifest["mediaType"], "digest": digest, "size": len(body)}

    def tag(self, descriptor: dict, tag: str) -> None:
        got = requests.get(f"{self.registry.url}/v2/{self.repository}/manifests/{descriptor['digest']}",
                           auth=self.auth, headers={"Accept": descriptor["mediaType"]}, timeout=10)
        response = requests.put(f"{self.registry.url}/v2/{self.repository}/manifests/{tag}", data=got.content,
                                auth=self.auth, headers={"Content-Type": descriptor["mediaType"]}, timeout=10)
        assert response.status_code == 201, response.text

    def image(self, architecture: str, *, docker: bool = False) -> dict:
        """A one-layer image of its own for one platform (OCI, or Docker's schema 2)."""
        config = json.dumps({"architecture": architecture, "os": "linux", "created": uuid.uuid4().hex,
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_type = "application/vnd.docker.container.image.v1+json" if docker else \
            "application/vnd.oci.image.config.v1+json"
        layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker else \
            "application/vnd.oci.image.layer.v1.tar"
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                    "config": self.blob(config, config_type),
                    "layers": [self.blob(uuid.uuid4().bytes, layer_type)]}
        return {**self.manifest(manifest), "platform": {"architecture": architecture, "os": "linux"}}

    def index(self, children: list[dict], tag: str, *, docker: bool = False) -> dict:
        return self.manifest({"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
                              "manifests": children}, tag)

    def signature(self, subject: dict | None) -> dict:
        """A signature artifact: an OCI image manifest with an empty config; its `subject` when given."""
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                    "config": self.blob(b"{}", "application/vnd.oci.empty.v1+json"),
                    "layers": [self.blob(json.dumps({"signed": uuid.uuid4().hex}).encode(),
                                         "application/vnd.dev.cosign.simplesigning.v1+json")]}
        if subject is not None:
            manifest["subject"] = {k: subject[k] for k in ("mediaType", "digest", "size")}
        return self.manifest(manifest)

    def referrers_tag_index(self, subject: dict, listed: list[dict]) -> dict:
        """What an OCI 1.1 client writes where the registry has no referrers API: `sha256-<hex>` → an index of them."""
        entries = [{k: d[k] for k in ("mediaType", "digest", "size")} | {"artifactType": "application/example"}
                   for d in listed]
        return self.index(entries, subject["digest"].replace(":", "-"))


def cosign_tag(subject: dict, suffix: str) -> str:
    return subject["digest"].replace(":", "-") + suffix


@pytest.fixture
def pusher(registry):
    return Pusher(registry, f"related/{uuid.uuid4().hex[:8]}")


@pytest.fixture
def session(registry):
    session = RegistrySession(registry.address, registry.username, registry.password)
    yield session
    session.close()


@pytest.fixture
def signed(pusher):
    """An index of two platforms tagged `1.0`; the amd64 one signed by an artifact with a subject (listed by its
    referrers tag) and by a cosign signature (tagged `sha256-<hex>.sig`)."""
    amd64, arm64 = pusher.image("amd64"), pusher.image("arm64")
    index = pusher.index([amd64, arm64], "1.0")
    artifact = pusher.signature(amd64)
    tag_index = pusher.referrers_tag_index(amd64, [artifact])
    cosign = pusher.signature(None)
    pusher.tag(cosign, cosign_tag(amd64, ".sig"))
    return {"index": index, "amd64": amd64, "arm64": arm64, "artifact": artifact, "tag_index": tag_index,
            "cosign": cosign}


def digests(images, *names):
    return [images[name]["digest"] for name in names]


def test_the_children_of_a_real_oci_index_and_docker_manifest_list(pusher, session):
    amd64, arm64 = pusher.image("amd64"), pusher.image("arm64")
    index = pusher.index([amd64, arm64], "oci")
    docker_amd64, docker_arm64 = pusher.image("amd64", docker=True), pusher.image("arm64", docker=True)
    manifest_list = pusher.index([docker_amd64, docker_arm64], "docker", docker=True)
    repository = pusher.repository
    assert index_children(session, repository, index["digest"]) == [amd64["digest"], arm64["digest"]]
    assert index_children(session, repository, manifest_list["digest"]) == [docker_amd64["digest"],
                                                                            docker_arm64["digest"]]
    assert index_children(session, repository, amd64["digest"]) == []  # a plain manifest
    assert index_children(session, repository, "sha256:" + "0" * 64) == []  # none at all


def test_without_the_referrers_api_the_tag_index_and_cosign_tags_are_found(signed, pusher, session):
    repository = pusher.repository
    lookup = referrers_find(session, repository, signed["amd64"]["digest"])
    assert lookup.api is False  # distribution 2.8 answers 404: the referrers tag schema and cosign's tags
    assert lookup.accepted == {signed["artifact"]["digest"]: f"tag {cosign_tag(signed['amd64'], '')}",
                               signed["cosign"]["digest"]: f"tag {cosign_tag(signed['amd64'], '.sig')}"}
    assert referrers(session, repository, signed["amd64"]["digest"]) == digests(signed, "artifact", "cosign")
    assert referrers(session, repository, signed["arm64"]["digest"]) == []
    assert referrers(session, repository, signed["index"]["digest"]) == []


def test_a_tag_index_or_cosign_tag_naming_another_subjects_referrer_is_refused(signed, pusher, session):
    # A build writes the arm64 manifest's referrers tag and cosign tag, both naming the amd64 manifest's signature.
    pusher.referrers_tag_index(signed["arm64"], [signed["artifact"]])
    pusher.tag(signed["artifact"], cosign_tag(signed["arm64"], ".att"))
    lookup = referrers_find(session, pusher.repository, signed["arm64"]["digest"])
    assert lookup.accepted == {}
    assert f"its manifest names the subject {signed['amd64']['digest']}" in lookup.refused[signed["artifact"]["digest"]]


def test_deleting_the_index_takes_its_children_and_their_signatures_in_order(signed, pusher, session, registry):
    repository = pusher.repository
    tags = {tag: session.manifest_digest(repository, tag) for tag in session.tags(repository)}
    graph = repository_graph(session, repository, wanted=[signed["index"]["digest"]], tags=tags)
    plan = related_plan([signed["index"]["digest"]], {}, graph)
    assert [[item.digest for item in stage] for stage in plan.stages] == [
        digests(signed, "index"), sorted(digests(signed, "amd64", "arm64")), sorted(digests(signed, "artifact",
                                                                                             "cosign")),
        digests(signed, "tag_index")]
    asked = []

    def delete(batch):
        asked.append(sorted(batch))
        return {d: Deletion.deleted("manifest deleted") if session.delete_manifest(repository, d) else
                Deletion.gone("already gone") for d in batch}

    outcomes = related_deletions_run(plan, delete)
    assert asked == [[item.digest for item in stage] for stage in plan.stages]
    assert all(manifest_status(registry, repository, d) == 404 for d in outcomes)
    assert session.tags(repository) == []  # `1.0`, `sha256-<hex>` and `sha256-<hex>.sig` went with them
    assert related_summary(plan, outcomes, signed["index"]["digest"]).startswith("deleted with it: ")


def test_a_child_tagged_by_someone_else_stays_with_its_signatures(signed, pusher, session, registry):
    repository = pusher.repository
    pusher.tag(signed["amd64"], "amd64-stable")  # someone pins one platform
    tags = {tag: session.manifest_digest(repository, tag) for tag in session.tags(repository)}
    graph = repository_graph(session, repository, wanted=[signed["index"]["digest"]], tags=tags)
    plan = related_plan([signed["index"]["digest"]], {}, graph)
    assert [[item.digest for item in stage] for stage in plan.stages] == [digests(signed, "index"),
                                                                           digests(signed, "arm64")]
    assert plan.kept[signed["amd64"]["digest"]].endswith("tag 'amd64-stable' points to it and stays")
    assert set(plan.kept) == set(digests(signed, "amd64", "artifact", "cosign", "tag_index"))
    related_deletions_run(plan, lambda batch: {d: Deletion.deleted("") for d in batch
                                               if session.delete_manifest(repository, d)})
    assert [manifest_status(registry, repository, d) for d in digests(signed, "index", "arm64")] == [404, 404]
    for name in ("amd64", "artifact", "cosign", "tag_index"):
        assert manifest_status(registry, repository, signed[name]["digest"]) == 200, name
    assert sorted(session.tags(repository)) == sorted(["amd64-stable", cosign_tag(signed["amd64"], ""),
                                                       cosign_tag(signed["amd64"], ".sig")])


def test_one_platform_asked_while_its_index_is_tagged_stays(signed, pusher, session):
    repository = pusher.repository
    tags = {tag: session.manifest_digest(repository, tag) for tag in session.tags(repository)}
    graph = repository_graph(session, repository, wanted=[signed["arm64"]["digest"]], tags=tags)
    plan = related_plan([signed["arm64"]["digest"]], {}, graph)
    assert plan.stages == []
    assert plan.kept == {signed["arm64"]["digest"]: f"index {signed['index']['digest']}, which stays, references it"}


def test_a_kept_images_signature_tagged_as_a_deleted_ones_stays(signed, pusher, session):
    # A build re-tags the amd64 manifest's cosign signature as the signature of its own image, then is deleted.
    own = pusher.image("amd64")
    pusher.tag(own, "build-4")
    pusher.tag(signed["cosign"], cosign_tag(own, ".sig"))
    repository = pusher.repository
    tags = {tag: session.manifest_digest(repository, tag) for tag in session.tags(repository)}
    graph = repository_graph(session, repository, wanted=[own["digest"]], tags=tags)
    plan = related_plan([own["digest"]], {}, graph)
    assert [[item.digest for item in stage] for stage in plan.stages] == [[own["digest"]]]
    assert plan.kept[signed["cosign"]["digest"]].endswith(
        f"tag '{cosign_tag(signed['amd64'], '.sig')}' points to it and stays")
