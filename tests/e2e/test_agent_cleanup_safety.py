"""Agent clean-up never removes what is in use, even when it changed after the plan: the checks are made
again right before each removal, on the real daemon (the session's), with images of the test's own.

`progress` is called after each removal: the tests change the daemon there, between the plan and
the next removal, as a build running meanwhile would.
"""

import io
import os
import re
import shutil
import tarfile
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from agent.cleanup import CleanupError, Policy, images_remove_until_free, keep_patterns_parse
from agent.protocol import TrackedImage

pytestmark = [pytest.mark.e2e]
TiB = 1024 ** 4
LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)


def import_tiny(client, reference: str) -> str:
    """A small image of its own (one file of random content); its ID."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = os.urandom(2048)
        info = tarfile.TarInfo("data")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repository, tag = reference.rsplit(":", 1)
    client.api.import_image_from_data(buf.getvalue(), repository=repository, tag=tag)
    return client.images.get(reference).id


@pytest.fixture
def images(docker_client):
    """images(*names) → their references (safety-<random>/<name>:1), imported; all removed after the test."""
    prefix = f"safety-{uuid.uuid4().hex[:8]}"
    containers = []

    def make(*names):
        references = [f"{prefix}/{name}:1" for name in names]
        for reference in references:
            import_tiny(docker_client, reference)
        return references

    make.containers = containers
    yield make
    for container in containers:
        docker_client.api.remove_container(container, force=True)
    for image in docker_client.api.images():
        if any(tag.startswith(prefix + "/") for tag in image.get("RepoTags") or []):
            docker_client.api.remove_image(image["Id"], force=True)


def tags(client, reference):
    try:
        return client.images.get(reference).tags
    except Exception:  # noqa: BLE001 - not found
        return []


def run(client, daemon, tracked, policy=None, progress=None, dry_run=False):
    required = shutil.disk_usage(daemon.data_root).free + TiB  # never met: every candidate is tried
    return images_remove_until_free(client, tracked, required, daemon.data_root, "the test", policy=policy,
                                    progress=progress, dry_run=dry_run)


def removed_images(result) -> list[dict]:
    """The images a run removed; not BuildKit's build cache, which other tests' builds may have left in the
    shared daemon (a requirement never met prunes it too)."""
    return [item for item in result.removed if item.get("kind") != "build cache"]


def test_an_image_a_container_started_using_after_the_plan_stays(docker_daemon, docker_client, images):
    first, second = images("first", "second")
    tracked = [TrackedImage(first, LONG_AGO), TrackedImage(second, LONG_AGO + timedelta(minutes=1))]
    name = f"uses-{uuid.uuid4().hex[:8]}"

    def progress(text):
        if text.startswith(f"removed {first}"):  # between the plan and the removal of the second
            images.containers.append(docker_client.api.create_container(second, "true", name=name,
                                                                        host_config={"NetworkMode": "none"})["Id"])

    result = run(docker_client, docker_daemon, tracked, progress=progress)
    assert [item["references"] for item in removed_images(result)] == [[first]]
    assert [(item["references"], item["reason"]) for item in result.kept] == [
        ([second], f"a container uses it ({name})")]
    assert result.errors == []  # kept by the check, not by the daemon refusing
    assert tags(docker_client, second) == [second] and tags(docker_client, first) == []


def test_a_reference_that_names_another_image_by_its_removal_is_left_alone(docker_daemon, docker_client, images):
    first, moved, other = images("first", "moved", "other")
    tracked = [TrackedImage(first, LONG_AGO), TrackedImage(moved, LONG_AGO + timedelta(minutes=1))]
    other_id = docker_client.images.get(other).id

    def progress(text):
        if text.startswith(f"removed {first}"):  # a build tags another image with the same name meanwhile
            docker_client.api.tag(other, moved.rsplit(":", 1)[0], "1")

    result = run(docker_client, docker_daemon, tracked, progress=progress)
    assert [item["references"] for item in removed_images(result)] == [[first]]
    assert [(item["references"], item["reason"]) for item in result.kept] == [
        ([moved], f"{moved} now names another image")]
    assert docker_client.images.get(moved).id == other_id
    assert sorted(tags(docker_client, other)) == sorted([moved, other])


def test_a_dry_run_that_cannot_be_met_does_not_plan_an_image_a_stopped_container_uses(docker_daemon, docker_client,
                                                                                       images):
    used, free = images("used", "free")
    images.containers.append(docker_client.api.create_container(used, "true", host_config={"NetworkMode": "none"})
                             ["Id"])
    tracked = [TrackedImage(used, LONG_AGO), TrackedImage(free, LONG_AGO + timedelta(minutes=1))]
    result = run(docker_client, docker_daemon, tracked, dry_run=True)
    assert not result.met
    assert [candidate.references for candidate in result.plan] == [[free]]
    assert [item["references"] for item in result.kept] == [[used]]
    assert result.kept[0]["reason"].startswith("a container uses it (")
    assert tags(docker_client, used) == [used] and tags(docker_client, free) == [free]


def test_keep_patterns_search_each_reference_as_listed_and_in_full(docker_daemon, docker_client, images):
    base, app, other = images("base", "app", "other")
    prefix = base.split("/")[0]
    tracked = [TrackedImage(reference, LONG_AGO) for reference in (base, app, other)]
    policy = Policy(keep_patterns=keep_patterns_parse(f"^docker\\.io/{prefix}/base:\n\n  app  \n"))
    result = run(docker_client, docker_daemon, tracked, policy=policy)
    assert [item["references"] for item in removed_images(result)] == [[other]]
    assert {item["references"][0]: item["reason"] for item in result.kept} == {
        base: f"{base} matches the keep pattern '^docker\\\\.io/{prefix}/base:'",
        app: f"{app} matches the keep pattern 'app'",
    }
    assert tags(docker_client, base) == [base] and tags(docker_client, app) == [app]


def test_an_invalid_keep_pattern_is_named_with_its_line():
    with pytest.raises(CleanupError) as error:
        keep_patterns_parse("^ok$\nbad(\n\n[z-a]")
    assert str(error.value).startswith("keep patterns: line 2: 'bad(' is not a regular expression (")
    assert "line 4: '[z-a]' is not a regular expression (" in str(error.value)
    assert [p.pattern for p in keep_patterns_parse(" ^a \n\nb\n")] == ["^a", "b"]
    assert keep_patterns_parse("") == [] and isinstance(keep_patterns_parse("x")[0], re.Pattern)


def test_images_younger_than_the_minimum_age_stay(docker_daemon, docker_client, images):
    created, used_lately, other = images("created", "used-lately", "other")
    # The policy's clock (the daemon's, for the agent) an hour on: the images were made an hour "ago".
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    tracked = [TrackedImage(created, LONG_AGO), TrackedImage(other, LONG_AGO),
               TrackedImage(used_lately, later - timedelta(seconds=30))]
    result = run(docker_client, docker_daemon, tracked, policy=Policy(min_age=4000, now=lambda: later))
    reasons = {item["references"][0]: item["reason"] for item in result.kept}
    assert removed_images(result) == [] and set(reasons) == {created, used_lately, other}
    assert re.fullmatch(r"created 36\d\d s ago, less than the minimum age of 4000 s", reasons[created])
    assert reasons[used_lately] == "last used by a build 30 s ago, less than the minimum age of 4000 s"
    result = run(docker_client, docker_daemon, tracked, policy=Policy(min_age=600, now=lambda: later))
    assert [item["references"][0] for item in result.kept] == [used_lately]
    assert sorted(item["references"][0] for item in removed_images(result)) == sorted([created, other])
