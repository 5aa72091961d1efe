"""The Docker Info summary from recorded operations: containers, images, anonymous pulls."""

import pytest
from django.urls import reverse
from django.utils import timezone

from agent.events import parse_event
from agent.references import registry_and_repository, split_reference
from builds.operations.selectors import docker_info_summary
from tests.factories import BuildFactory, ingest

pytestmark = pytest.mark.django_db
T0 = 1_790_000_000_000_000_000


def event(kind, action, actor, seconds, **attributes):
    return parse_event({"Type": kind, "Action": action, "timeNano": T0 + int(seconds * 1e9),
                        "Actor": {"ID": actor, "Attributes": attributes}})


@pytest.fixture
def build():
    build = BuildFactory(started_at=timezone.now(), logged_in_registries=["127.0.0.1:5000"])
    records = [
        event("image", "pull", "busybox:latest", 0, name="busybox"),
        event("image", "pull", "127.0.0.1:5000/team/base:2", 1, name="127.0.0.1:5000/team/base"),
        event("container", "create", "a" * 64, 2, name="ok", image="busybox:latest"),
        event("container", "start", "a" * 64, 2.5, name="ok", image="busybox:latest"),
        event("container", "die", "a" * 64, 4, name="ok", image="busybox:latest", exitCode="0"),
        event("container", "start", "b" * 64, 5, name="bad", image="busybox:latest"),
        event("container", "exec_start: sh -c true", "b" * 64, 5.5, name="bad", image="busybox:latest"),
        event("container", "die", "b" * 64, 6, name="bad", image="busybox:latest", exitCode="3"),
        event("container", "attach", "b" * 64, 6.1, name="bad", image="busybox:latest"),  # not recorded
    ]
    ingest(build, [r for r in records if r])
    return build


def test_summary_counts_containers_with_exit_codes_and_run_time(build):
    summary = docker_info_summary(build)
    assert summary["operation_count"] == 8
    assert summary["counts"]["exec"] == 1
    # Failed containers first, in the API as on the tab.
    assert [(c["name"], c["exit_code"], c["failed"], c["seconds"]) for c in summary["containers"]] == [
        ("bad", 3, True, 1.0), ("ok", 0, False, 1.5)]
    assert summary["seconds_in_containers"] == 2.5
    assert summary["images_pulled"] == ["127.0.0.1:5000/team/base:2", "busybox:latest"]


def test_a_pull_from_a_registry_the_build_did_not_log_in_to_is_flagged(build, admin_client):
    [warning] = docker_info_summary(build)["warnings"]
    assert warning == ("busybox:latest was pulled anonymously: the build was not logged in to docker.io "
                       "(anonymous pulls get Docker Hub's lower rate limit)")
    page = admin_client.get(reverse("admin:builds_build_docker_info", args=[build.pk])).content.decode()
    assert "was pulled anonymously" in page and "ds-failed" in page


@pytest.mark.parametrize("image, expected", [
    ("busybox", ("docker.io", "library/busybox")), ("team/app", ("docker.io", "team/app")),
    ("127.0.0.1:5000/team/app", ("127.0.0.1:5000", "team/app")), ("localhost/app", ("localhost", "app")),
    ("ghcr.io/o/r", ("ghcr.io", "o/r")), ("index.docker.io/library/x", ("docker.io", "library/x")),
])
def test_registry_and_repository(image, expected):
    assert registry_and_repository(image) == expected


@pytest.mark.parametrize("reference, expected", [
    ("127.0.0.1:5000/team/app:1", ("127.0.0.1:5000/team/app", "1", "")),
    ("127.0.0.1:5000/team/app", ("127.0.0.1:5000/team/app", "", "")),
    ("busybox@sha256:abc", ("busybox", "", "sha256:abc")),
])
def test_split_reference(reference, expected):
    assert split_reference(reference) == expected


@pytest.mark.parametrize(("image", "expected"), [
    ("sha256:" + "c" * 64, ("sha256:" + "c" * 64, "")),  # created from an image ID: one value, not sha256 + a tag
    ("127.0.0.1:5000/team/app:1", ("127.0.0.1:5000/team/app", "1")),
    ("busybox", ("busybox", "")),
])
def test_a_containers_image_is_recorded_whole(image, expected):
    record = event("container", "create", "a" * 64, 0, name="c", image=image)
    assert (record["image"], record["tag"]) == expected


def test_a_pulls_digest_and_image_id_asked_of_the_daemon_afterwards_are_not_part_of_its_identity():
    """The agent adds them after the event; a replay once the image is gone comes without them: one operation."""
    from builds.operations.records import operation_fields

    record = event("image", "pull", "busybox:latest", 0, name="busybox")
    enriched = {**record, "digest": "sha256:" + "d" * 64,
                "attributes": {**record["attributes"], "image_id": "sha256:" + "e" * 64}}
    assert operation_fields(enriched)["identity"] == operation_fields(record)["identity"]
    # Pulled by digest: the digest is the event's own, and two digests are two pulls.
    first = event("image", "pull", "busybox@sha256:" + "a" * 64, 0, name="busybox")
    second = event("image", "pull", "busybox@sha256:" + "b" * 64, 0, name="busybox")
    assert operation_fields(first)["identity"] != operation_fields(second)["identity"]


def test_a_build_event_is_recorded_as_a_build():
    record = parse_event({"Type": "image", "Action": "create", "timeNano": T0,
                          "Actor": {"ID": "sha256:" + "c" * 64, "Attributes": {"name": "app:1"}}})
    assert (record["action"], record["image"], record["tag"]) == ("build", "app", "1")


def test_long_lists_are_cut_but_failed_containers_always_show(admin_client, settings):
    from builds.admin.builds import BuildAdmin
    from builds.models import PushedImage

    build = BuildFactory(started_at=timezone.now())
    records = []
    for n in range(60):
        container = f"{n:064x}"
        records.append(event("container", "start", container, n, name=f"c{n}", image="busybox:latest"))
        records.append(event("container", "die", container, n + 0.5, name=f"c{n}", image="busybox:latest",
                             exitCode="1" if n == 59 else "0"))
        records.append(event("image", "push", f"127.0.0.1:5000/app/n{n}:1", n + 0.7, name="127.0.0.1:5000/app/n"))
    ingest(build, records)
    url = reverse("admin:builds_build_docker_info", args=[build.pk])
    response = admin_client.get(url)
    shown = [c["name"] for c in response.context["containers"]]
    assert len(shown) == BuildAdmin.docker_info_list_size and "c59" in shown and "c58" not in shown
    assert len(response.context["pushed_images"]) == 50 and response.context["pushed_count"] == 60
    assert PushedImage.objects.filter(build=build).count() == 60
    listing = admin_client.get(response.context["pushed_url"])
    assert listing.status_code == 200 and listing.context["cl"].result_count == 60


def test_the_operation_time_is_the_event_time(build):
    from datetime import datetime, timedelta, timezone

    first = build.operations.order_by("time_nano").first()
    assert first.time_nano == T0
    assert abs(first.time - datetime.fromtimestamp(T0 / 1e9, tz=timezone.utc)) <= timedelta(microseconds=1)
