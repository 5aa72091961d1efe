"""What a hostile build or agent, or a registry that says less than it could, must not make clean-up do.

The registry is the harness's referrers-API stand-in (tests/harness/referrers_registry.py, on 127.0.0.x), which
records every request: a DELETE it never received is a deletion that did not happen.
"""

import threading
import time

import pytest
from django.utils import timezone

from builds.cleanup.registry import build_delete, pending_deletions_process
from builds.models import Build, DockerOperation, PushedImage, SetAsideRecord
from connections.registries import RegistryError
from connections.registries.v2 import MAX_TAG_PAGES, RegistrySession
from tests.builds.test_ingestion import record, send, start
from tests.factories import (
    BuildConfigurationFactory,
    LoginConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)
from tests.harness.referrers_registry import OCI_INDEX, OCI_MANIFEST, ReferrersRegistry, _json
from tests.harness.stand_in import StandIn

pytestmark = pytest.mark.django_db
PASSWORD = "registry-secret-1234567890"


def image(n):
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + f"{n}" * 64,
                       "size": 2}, "layers": []}


def tombstone(project, address, repository, tag, digest, **fields):
    values = {"cleanup_status": PushedImage.CleanupStatus.PENDING, "next_attempt_at": timezone.now(), **fields}
    return PushedImage.objects.create(project=project, configuration_ident="gone", build_number=1, registry=address,
                                      repository=repository, tag=tag, digest=digest, pushed_at=timezone.now(),
                                      **values)


def deletes(registry):
    return [r.path for r in registry.requests if r.method == "DELETE"]


class NoDigestHeader(ReferrersRegistry):
    """An OCI-conformant registry: Docker-Content-Digest is optional (distribution spec, legacy Docker headers)."""

    def _manifest(self, method, name, reference):
        answer = super()._manifest(method, name, reference)
        answer.headers.pop("Docker-Content-Digest", None)
        return answer


@pytest.mark.parametrize("forged", [
    "../../victim/app/manifests/sha256:" + "7" * 64,
    "sha256:" + "7" * 64 + "/../x",
    "%2e%2e/victim",
])
def test_a_push_record_whose_digest_is_a_path_is_no_pushed_image(call, agent_token, forged):
    acme = ProjectFactory(ident="acme")
    BuildConfigurationFactory(ident="app", project=acme, cleanup_pushed_images=True)
    build = start(call, agent_token, "app")
    send(call, agent_token, [{**record([build], time.time_ns(), action="push", image="127.0.0.1:5000/acme",
                                       tag="1"), "digest": forged}])
    assert DockerOperation.objects.filter(build_id=build, action="push").exists()  # the operation is shown
    assert not PushedImage.objects.filter(build_id=build).exists()  # but nothing clean-up would act on
    assert "digest is not one a registry would accept" in SetAsideRecord.objects.get().error


@pytest.mark.parametrize("repository", ["acme/../victim/app", "acme/./app", "Acme/App", "acme//app"])
def test_a_push_record_whose_repository_is_not_a_name_is_no_pushed_image(call, agent_token, repository):
    BuildConfigurationFactory(ident="app", project=ProjectFactory(ident="acme"), cleanup_pushed_images=True)
    build = start(call, agent_token, "app")
    send(call, agent_token, [{**record([build], time.time_ns(), action="push", image=f"127.0.0.1:5000/{repository}",
                                       tag="1"), "digest": "sha256:" + "7" * 64}])
    assert not PushedImage.objects.filter(build_id=build).exists()


def test_a_malformed_row_already_stored_is_kept_and_nothing_is_sent():
    """Rows stored before names were checked: clean-up keeps them and asks the registry nothing about them."""
    with ReferrersRegistry("127.0.0.9") as registry:
        acme = ProjectFactory(ident="acme")
        RegistryConnectionFactory(project=acme, registry=registry.address, username=registry.username,
                                  password=registry.password)
        prod = registry.push("victim/app", image(7), tag="prod")
        row = tombstone(acme, registry.address, "acme", "1", "../../victim/app/manifests/" + prod)
        pending_deletions_process()
        row.refresh_from_db()
        assert row.cleanup_status == PushedImage.CleanupStatus.KEPT, row.cleanup_reason
        assert "not one a registry would accept" in row.cleanup_reason
        assert prod in registry.manifests["victim/app"] and not deletes(registry)


def test_the_registry_client_never_sends_a_path_with_dot_segments_nor_deletes_by_anything_but_a_digest():
    with ReferrersRegistry("127.0.0.9") as registry:
        session = RegistrySession(registry.address, registry.username, registry.password)
        for call_ in (lambda: session.delete_manifest("acme", "../../victim/app/manifests/sha256:" + "7" * 64),
                      lambda: session.delete_manifest("acme/../victim", "sha256:" + "7" * 64),
                      lambda: session.delete_manifest("acme", "latest"),
                      lambda: session.manifest_digest("acme", "..%2fvictim"),
                      lambda: session.request("GET", "/v2/acme/%2E%2E/victim/tags/list")):
            with pytest.raises(RegistryError):
                call_()
        assert not registry.requests


def test_without_the_optional_digest_header_tags_still_protect_and_indexes_still_hold(settings):
    """A registry need not send Docker-Content-Digest: the client hashes the manifest instead of taking every tag
    for absent (which made protected tags and indexes in use protect nothing)."""
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "release-*"
    with NoDigestHeader("127.0.0.5") as registry:
        project = ProjectFactory(ident="acme")
        RegistryConnectionFactory(project=project, registry=registry.address, username=registry.username,
                                  password=registry.password)
        protected = registry.push("team/app", image(1), tag="build-1")
        registry.tags["team/app"]["release-7"] = protected  # a protected tag set by hand on the same digest
        child = registry.push("team/app", image(2), tag="build-2")
        index = registry.push("team/app", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": 1}]}, tag="prod")  # an index in use holds child
        gone = registry.push("team/app", image(3), tag="build-3")
        rows = [tombstone(project, registry.address, "team/app", tag, digest)
                for tag, digest in (("build-1", protected), ("build-2", child), ("build-3", gone))]
        pending_deletions_process()
        for row in rows:
            row.refresh_from_db()
        assert [row.cleanup_status for row in rows] == ["kept", "kept", "deleted"], [r.cleanup_reason for r in rows]
        assert {protected, child, index} <= set(registry.manifests["team/app"])
        assert gone not in registry.manifests["team/app"]


def test_a_tag_list_whose_pages_never_end_is_an_error_not_a_hung_worker():
    pages = []

    def script(recorded):
        pages.append(recorded.path)
        return _json(200, {"name": "team/app", "tags": [f"t{len(pages)}"]},
                     {"Link": f'</v2/team/app/tags/list?n=1000&last=t{len(pages) % 3}>; rel="next"'})

    stand_in = StandIn("127.0.0.6", script)
    stand_in.start()
    try:
        result = {}
        worker = threading.Thread(target=lambda: result.update(error=_error_of(
            lambda: RegistrySession(stand_in.address).tags("team/app"))), daemon=True)
        worker.start()
        worker.join(120)
        assert not worker.is_alive()
        assert "do not end" in result["error"]
        assert len(pages) <= 4  # a page asked twice ends it
    finally:
        stand_in.stop()


def test_a_tag_list_link_that_leads_elsewhere_is_not_followed():
    pages = []

    def script(recorded):
        pages.append(recorded.path)
        return _json(200, {"name": "team/app", "tags": ["a"]}, {"Link": '</v2/other/app/tags/list?n=1>; rel="next"'})

    stand_in = StandIn("127.0.0.6", script)
    stand_in.start()
    try:
        assert "leads elsewhere" in _error_of(lambda: RegistrySession(stand_in.address).tags("team/app"))
        assert pages == ["/v2/team/app/tags/list?n=1000"]
    finally:
        stand_in.stop()
    assert MAX_TAG_PAGES >= 100


def _error_of(function) -> str:
    try:
        function()
    except RegistryError as exc:
        return str(exc)
    return ""


def test_a_digest_an_image_kept_by_its_configuration_holds_is_not_deleted():
    """A deleted build's image its configuration keeps still holds its digest: another build that re-pushed the
    same digest under its own tag does not delete it when cleaned up."""
    with ReferrersRegistry("127.0.0.7") as registry:
        acme, other = ProjectFactory(ident="acme"), ProjectFactory(ident="other")
        RegistryConnectionFactory(project=acme, registry=registry.address, username=registry.username,
                                  password=registry.password)
        kept = registry.push("shared/app", image(3), tag="latest")
        registry.push("shared/app", image(4), tag="latest")  # 'latest' moved on; `kept` is deployed by digest
        PushedImage.objects.create(project=other, configuration_ident="keeps", build_number=1,
                                   registry=registry.address, repository="shared/app", tag="latest", digest=kept,
                                   pushed_at=timezone.now(), cleanup_status=PushedImage.CleanupStatus.KEPT,
                                   cleanup_reason="build keeps #1 was deleted; its configuration keeps pushed images")
        registry.tags["shared/app"]["acme-5"] = kept
        row = tombstone(acme, registry.address, "shared/app", "acme-5", kept)
        pending_deletions_process()
        row.refresh_from_db()
        assert row.cleanup_status == PushedImage.CleanupStatus.KEPT
        assert "an image that is kept (keeps #1" in row.cleanup_reason
        assert kept in registry.manifests["shared/app"] and not deletes(registry)


def test_an_image_a_run_kept_only_because_of_another_does_not_hold_its_digest_for_ever():
    """A tombstone kept by a run's decision (something else held its digest then) is not kept by design: once
    the holder is gone, the digest is deleted with the next image that wants it."""
    with ReferrersRegistry("127.0.0.7") as registry:
        acme = ProjectFactory(ident="acme")
        RegistryConnectionFactory(project=acme, registry=registry.address, username=registry.username,
                                  password=registry.password)
        digest = registry.push("team/app", image(5), tag="b-2")
        tombstone(acme, registry.address, "team/app", "b-1", digest, cleanup_status=PushedImage.CleanupStatus.KEPT,
                  cleanup_attempts=1, cleanup_reason="build app #2, which is kept, pushed the same digest")
        row = tombstone(acme, registry.address, "team/app", "b-2", digest)
        pending_deletions_process()
        row.refresh_from_db()
        assert row.cleanup_status == PushedImage.CleanupStatus.DELETED, row.cleanup_reason
        assert digest not in registry.manifests["team/app"]


def test_a_push_seen_while_a_since_deleted_build_ran_stays_of_uncertain_owner(call, agent_token):
    """Builds A and B ran together on one daemon and one of them pushed; B is deleted before the batch is
    ingested. A is not its certain owner: cleaning A up must not delete what may be B's."""
    project = ProjectFactory(ident="acme")
    BuildConfigurationFactory(ident="app", project=project, cleanup_pushed_images=True)
    BuildConfigurationFactory(ident="other", project=project, cleanup_pushed_images=True)
    a, b = start(call, agent_token, "app"), start(call, agent_token, "other")
    Build.objects.filter(pk=b).update(status="succeeded", finished_at=timezone.now())
    build_delete(Build.objects.get(pk=b))
    send(call, agent_token, [{**record([a, b], time.time_ns(), action="push", image="127.0.0.1:5000/acme/app",
                                       tag="1"), "digest": "sha256:" + "8" * 64}])
    image_ = PushedImage.objects.get(build_id=a)
    assert image_.owner_uncertain
    assert "1 build(s) deleted since" in image_.owner_note


def test_a_secret_straddling_a_column_is_masked_whole_not_cut_first(call, agent_token):
    configuration = BuildConfigurationFactory(ident="app", project=ProjectFactory(ident="acme"))
    LoginConnectionFactory(configuration=configuration, connection__password=PASSWORD)
    build = start(call, agent_token, "app")
    sent = record([build], time.time_ns(), action="create")
    sent["container_name"] = "n" * 245 + PASSWORD  # the column holds 255
    sent["tag"] = "t" * 118 + PASSWORD  # the column holds 128
    send(call, agent_token, [sent])
    operation = DockerOperation.objects.get(build_id=build)
    for value in (operation.container_name, operation.tag, str(operation.attributes)):
        assert PASSWORD[:6] not in value, value
