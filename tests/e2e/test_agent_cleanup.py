"""Agent clean-up (Free Disk Space) on a real daemon whose data lives on a small tmpfs of its own,
so that free space moves only with what the test does."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from django.urls import reverse

from builds.cleanup.agent import kept_items, removed_items
from builds.models import Agent, AgentCleanup, AgentImage, Build
from tests.conftest import IN_CI
from tests.e2e.conftest import ROOT, command_env
from tests.factories import AgentFactory
from tests.harness import DockerDaemon, import_busybox_image

pytestmark = [pytest.mark.e2e]
MiB = 1024 * 1024


class SmallDiskDaemon(DockerDaemon):
    """A daemon whose data root is a 256 MiB tmpfs (unmounted by the harness when it stops)."""

    def _prepare(self):
        super()._prepare()
        data = os.path.join(self.root, "data")
        os.makedirs(data, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", data], check=True)


@pytest.fixture
def start_small_agent(start_service, start_agent):
    """start_small_agent(**agent_fields) → (agent, daemon): an agent on a daemon of its own with a small disk."""

    def run(**fields):
        daemon = start_service(SmallDiskDaemon())
        client = daemon.client()
        import_busybox_image(client)  # made by no build: must stay
        client.close()
        name = AgentFactory(**fields).name
        agent = start_agent(name=name, docker_host=daemon.host, DOCKERSUPPORT_DOCKER_DATA_PATH=daemon.data_root)
        return agent, daemon

    return run


@pytest.fixture
def small_agent(start_small_agent):
    """An agent with a small disk where images made a moment ago may go (minimum age 0)."""
    return start_small_agent(min_image_age=0)


def free_bytes(daemon) -> int:
    return shutil.disk_usage(daemon.data_root).free


def build_images(manage, configuration, agent, tmp_path):
    """Build 1 builds made/a, made/b, made/c (8 MiB each); build 2 runs a (a container, removed after)
    and creates a stopped container of c: last use is b < c < a, and c is in use."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM dockersupport-test/busybox:latest\nARG NAME\nRUN head -c 8388608 /dev/urandom > /big-$NAME\n")
    script = " && ".join(f"docker build -q --network none --build-arg NAME={n} -t made/{n}:1 {context}"
                         for n in "abc")
    first = manage("run_build", configuration.ident, "--agent", agent.name, "--", "sh", "-c", script,
                   DOCKER_BUILDKIT="0", DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert first.returncode == 0, first.stdout + first.stderr
    second = manage("run_build", configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                    "docker create --network none --name holds-c made/c:1 true >/dev/null && "
                    "docker run --rm --network none made/a:1 true", DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert second.returncode == 0, second.stdout + second.stderr


def tags(daemon):
    client = daemon.client()
    try:
        return {tag for image in client.images.list() for tag in image.tags}
    finally:
        client.close()


def test_build_images_go_least_recently_used_first_and_only_as_many_as_needed(small_agent, manage, tmp_path,
                                                                             registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    assert {"made/a:1", "made/b:1", "made/c:1"} <= set(AgentImage.objects.filter(agent=agent.model)
                                                        .values_list("reference", flat=True))
    free = free_bytes(daemon)
    required = free + 4 * MiB

    dry = manage("free_disk_space", "--agent", agent.name, "--required", f"{required // 1024}K", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = [line.split()[0] for line in dry.stdout.splitlines() if line.startswith("  made/")]
    assert plan == ["made/b:1"]
    assert "nothing was changed" in dry.stdout and "made/b:1" in tags(daemon)

    result = manage("free_disk_space", "--agent", agent.name, "--required", f"{required // 1024}K")
    assert result.returncode == 0, result.stdout + result.stderr
    assert tags(daemon) >= {"made/a:1", "made/c:1", "dockersupport-test/busybox:latest"}
    assert "made/b:1" not in tags(daemon)
    record = AgentCleanup.objects.get(agent=agent.model)
    assert record.met and [item["references"] for item in record.removed] == [["made/b:1"]]
    assert record.bytes_reclaimed == record.free_after - record.free_before >= 8 * MiB


def test_a_requirement_that_cannot_be_met_reports_the_shortfall(small_agent, manage, tmp_path,
                                                                 registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    free = free_bytes(daemon)
    result = manage("free_disk_space", "--agent", agent.name, "--required", f"{(free + 200 * MiB) // MiB}M")
    assert result.returncode == 1
    assert "cannot free enough: short by" in result.stdout
    remaining = tags(daemon)
    # Everything builds made and nothing uses is gone; the image of a stopped container and the
    # image no build made stay.
    assert {"made/a:1", "made/b:1"}.isdisjoint(remaining)
    assert {"made/c:1", "dockersupport-test/busybox:latest"} <= remaining
    assert not AgentCleanup.objects.get(agent=agent.model).met


def test_run_build_frees_space_before_the_command(small_agent, manage, tmp_path, registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    free = free_bytes(daemon)
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name,
                    "--required-free", f"{(free + 4 * MiB) // 1024}K", "--", "true",
                    DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed made/b:1" in result.stdout and "made/b:1" not in tags(daemon)
    too_much = manage("run_build", registry_configuration.ident, "--agent", agent.name,
                      "--required-free", "10T", "--", "touch", str(tmp_path / "ran"),
                      DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert too_much.returncode == 1
    assert "short by" in too_much.stderr and "the command was not run" in too_much.stderr
    assert not (tmp_path / "ran").exists()


def test_a_data_path_that_does_not_exist_names_the_setting(manage, start_agent, tmp_path):
    from builds.models import Agent

    missing = tmp_path / "missing"
    agent = start_agent(DOCKERSUPPORT_DOCKER_DATA_PATH=str(missing))
    result = manage("free_disk_space", "--agent", agent.name, "--required", "1M")
    assert result.returncode == 1
    assert f"the Docker data path {missing} does not exist; it comes from DOCKERSUPPORT_DOCKER_DATA_PATH" \
        in result.stderr
    Agent.objects.filter(name=agent.name).update(docker_data_path=str(tmp_path / "nowhere"))
    agent.process.restart()  # the admin's setting reaches the agent when it connects
    result = manage("free_disk_space", "--agent", agent.name, "--required", "1M")
    assert "it comes from the agent's 'Docker data path' in the admin" in result.stderr


def test_an_agent_that_is_not_connected_is_named(manage, transactional_db):
    agent = AgentFactory()
    result = manage("free_disk_space", "--agent", agent.name, "--required", "1M")
    assert result.returncode == 1
    assert f"agent {agent.name} is not connected (never connected)" in result.stderr


def test_a_bad_size_is_refused(manage, transactional_db):
    agent = AgentFactory()
    result = manage("free_disk_space", "--agent", agent.name, "--required", "5X")
    assert result.returncode == 1
    assert "'5X' is not a size" in result.stderr


def test_run_build_refuses_a_size_of_nothing_before_starting_a_build(manage, agent, registry_configuration):
    result = manage("run_build", registry_configuration.ident, "--required-free", "0G", "--", "true")
    assert result.returncode == 1
    assert "--required-free 0G: '0G' is no space at all" in result.stderr
    assert not registry_configuration.builds.exists() and not AgentCleanup.objects.exists()


# --- Safe and complete (issue 14) ---------------------------------------------------------------------------

def unattainable(daemon) -> str:
    return f"{(free_bytes(daemon) + 200 * MiB) // MiB}M"


def kept_reasons(record) -> dict:
    return {ref: item["reason"] for item in kept_items(record) for ref in item["references"]}


def test_an_image_a_stopped_container_uses_is_neither_planned_nor_removed(small_agent, manage, tmp_path,
                                                                          registry_configuration, admin_client):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    required = unattainable(daemon)
    dry = manage("free_disk_space", "--agent", agent.name, "--required", required, "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert [line.split()[0] for line in dry.stdout.splitlines() if line.startswith("  made/")] == ["made/b:1",
                                                                                                  "made/a:1"]
    assert "  kept made/c:1: a container uses it (holds-c)" in dry.stdout

    result = manage("free_disk_space", "--agent", agent.name, "--required", required)
    assert result.returncode == 1 and "error:" not in result.stdout, result.stdout + result.stderr
    assert "made/c:1" in tags(daemon)
    record = AgentCleanup.objects.get(agent=agent.model)
    assert [item["references"] for item in removed_items(record)] == [["made/b:1"], ["made/a:1"]]
    assert all("(least recently used)" in item["reason"] for item in removed_items(record))
    assert kept_reasons(record) == {"made/c:1": "a container uses it (holds-c)"}
    assert AgentImage.objects.filter(agent=agent.model, reference="made/c:1").exists()  # still tracked

    page = admin_client.get(reverse("admin:builds_agent_change", args=[agent.model.pk])).content.decode()
    assert "made/c:1: a container uses it (holds-c)" in page
    assert "made/b:1: not used by a build since" in page


def test_images_younger_than_the_minimum_age_stay(start_small_agent, manage, tmp_path, registry_configuration):
    agent, daemon = start_small_agent()  # the default minimum age: 10 minutes
    assert agent.model.min_image_age == 600
    build_images(manage, registry_configuration, agent, tmp_path)
    before = tags(daemon)
    result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
    assert result.returncode == 1
    assert tags(daemon) == before
    record = AgentCleanup.objects.get(agent=agent.model)
    reasons = kept_reasons(record)
    assert removed_items(record) == [] and set(reasons) == {"made/a:1", "made/b:1", "made/c:1"}
    for reference in ("made/a:1", "made/b:1"):
        assert re.fullmatch(r"last used by a build \d+ s ago, less than the minimum age of 600 s", reasons[reference])


def test_keep_patterns_keep_the_images_they_match(start_small_agent, manage, tmp_path, registry_configuration):
    agent, daemon = start_small_agent(min_image_age=0, keep_patterns="^made/a:\n\n  ^docker\\.io/made/b:1$  \n")
    build_images(manage, registry_configuration, agent, tmp_path)
    result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
    assert result.returncode == 1
    assert {"made/a:1", "made/b:1", "made/c:1"} <= tags(daemon)
    assert kept_reasons(AgentCleanup.objects.get(agent=agent.model)) == {
        "made/b:1": "made/b:1 matches the keep pattern '^docker\\\\.io/made/b:1$'",
        "made/c:1": "a container uses it (holds-c)",
        "made/a:1": "made/a:1 matches the keep pattern '^made/a:'",
    }


def test_an_invalid_keep_pattern_stops_the_clean_up_before_anything_is_removed(start_small_agent, manage, tmp_path,
                                                                               registry_configuration):
    agent, daemon = start_small_agent(min_image_age=0)
    build_images(manage, registry_configuration, agent, tmp_path)
    Agent.objects.filter(name=agent.name).update(keep_patterns="^made/\nmade/(a")  # past the admin's check
    agent.process.restart()
    before = tags(daemon)
    result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
    assert result.returncode == 1
    assert "keep patterns: line 2: 'made/(a' is not a regular expression" in result.stderr
    assert tags(daemon) == before and not AgentCleanup.objects.exists()


def test_images_a_running_build_pulled_or_tagged_stay_until_it_ends(small_agent, manage, tmp_path, home,
                                                                     registry_configuration, private_image):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    started, release = tmp_path / "started", tmp_path / "release"
    script = (f"docker pull -q {private_image} >/dev/null && docker tag made/b:1 made/b:again && touch {started} && "
              f"while [ ! -e {release} ]; do sleep 0.1; done")
    running = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", registry_configuration.ident, "--agent", agent.name, "--",
         "sh", "-c", script], cwd=ROOT, env=command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        # Until the server tracks the pulled image: then it is a candidate that only the running build keeps.
        while not (started.exists() and AgentImage.objects.filter(agent=agent.model, reference=private_image)):
            assert time.monotonic() < deadline and running.poll() is None, running.communicate()
            time.sleep(0.1)
        build = Build.objects.get(configuration=registry_configuration, status=Build.Status.RUNNING)
        result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
        assert result.returncode == 1, result.stdout + result.stderr
        remaining = tags(daemon)
        assert {private_image, "made/b:1", "made/c:1"} <= remaining and "made/a:1" not in remaining
        reasons = kept_reasons(AgentCleanup.objects.get(agent=agent.model))
        used = f"build {build.configuration.ident} #{build.number}, running on this agent, used it"
        assert reasons[private_image] == reasons["made/b:1"] == used
        release.touch()
        out, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 0, out + err
    # Once it has ended, nothing of it is kept for it.
    result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
    assert {private_image, "made/b:1"}.isdisjoint(tags(daemon)) and "made/c:1" in tags(daemon)


def test_the_keep_free_threshold_frees_space_by_itself(small_agent, manage, tmp_path, registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    keep = free_bytes(daemon) + 4 * MiB
    Agent.objects.filter(name=agent.name).update(keep_free_bytes=keep)  # reaches the agent with its next heartbeat
    deadline = time.monotonic() + 30
    while not AgentCleanup.objects.filter(agent=agent.model).exists():
        assert time.monotonic() < deadline, agent.process.log()[-3000:]
        time.sleep(0.2)
    record = AgentCleanup.objects.get(agent=agent.model)
    assert record.reason.startswith("keep free threshold: ") and record.required_bytes == keep and record.met
    assert [item["references"] for item in removed_items(record)] == [["made/b:1"]]
    assert "made/b:1" not in tags(daemon) and free_bytes(daemon) >= keep
    time.sleep(3)  # a few more heartbeats: enough is free, so no other run
    assert AgentCleanup.objects.filter(agent=agent.model).count() == 1


DEBIAN_DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI builds with BuildKit without the buildx plugin


def buildkit_build(daemon, tmp_path, name):
    """An image built with BuildKit (an 8 MiB layer), then removed: its build cache stays, shared with nothing."""
    if not os.access(DEBIAN_DOCKER, os.X_OK):
        pytest.fail(f"{DEBIAN_DOCKER} (Debian's docker.io) is needed to build with BuildKit") if IN_CI else \
            pytest.skip(f"{DEBIAN_DOCKER} (Debian's docker.io) is not installed")
    context = tmp_path / f"context-{name}"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM dockersupport-test/busybox:latest\nRUN head -c 8388608 /dev/urandom > /big-{name}\n")
    environment = {**os.environ, "DOCKER_HOST": daemon.host, "DOCKER_BUILDKIT": "1", "HOME": str(tmp_path)}
    built = subprocess.run([DEBIAN_DOCKER, "build", "-q", "--network", "none", "-t", f"cached/{name}:1", str(context)],
                           env=environment, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    client = daemon.client()
    try:
        client.images.remove(f"cached/{name}:1")
    finally:
        client.close()


def build_cache_size(daemon) -> int:
    client = daemon.client()
    try:
        return sum(r["Size"] for r in client.api.df().get("BuildCache") or [] if not r["Shared"])
    finally:
        client.close()


def test_when_images_are_not_enough_buildkits_cache_is_pruned_down_to_what_is_needed(small_agent, manage, tmp_path):
    agent, daemon = small_agent
    buildkit_build(daemon, tmp_path, "x")
    buildkit_build(daemon, tmp_path, "y")
    cached = build_cache_size(daemon)
    assert cached >= 16 * MiB
    required = f"{(free_bytes(daemon) + 4 * MiB) // 1024}K"

    dry = manage("free_disk_space", "--agent", agent.name, "--required", required, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "then prune BuildKit's build cache: about 4.0M of 16.0M that can go" in dry.stdout
    assert build_cache_size(daemon) == cached

    result = manage("free_disk_space", "--agent", agent.name, "--required", required)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pruned BuildKit's build cache: 8.0M" in result.stdout
    record = AgentCleanup.objects.get(agent=agent.model)
    [item] = removed_items(record)
    assert item["kind"] == "build cache" and item["freed"] >= 4 * MiB and record.met
    assert item["reason"].startswith("removing images was not enough: 4.0M more was needed; BuildKit's build cache")
    # Down to what was needed: the least recently used record went, the other stays.
    assert 8 * MiB <= cached - build_cache_size(daemon) < 9 * MiB


def test_after_a_restart_images_used_since_a_running_build_started_stay(small_agent, manage, tmp_path, home,
                                                                         registry_configuration):
    """A restarted agent does not know what the builds it adopted did before: what builds used since then stays."""
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    used_before = AgentImage.objects.get(agent=agent.model, reference="made/b:1").last_used_at
    started, release = tmp_path / "started", tmp_path / "release"
    # The tag after the run: the restarted agent reads the stream again from the last event it had (the tag).
    script = (f"docker run --rm --network none made/b:1 true && docker tag dockersupport-test/busybox other:1 && "
              f"touch {started} && while [ ! -e {release} ]; do sleep 0.1; done")
    running = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", registry_configuration.ident, "--agent", agent.name, "--",
         "sh", "-c", script], cwd=ROOT, env=command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (started.exists() and AgentImage.objects.filter(agent=agent.model, reference="made/b:1",
                                                                  last_used_at__gt=used_before)):
            assert time.monotonic() < deadline and running.poll() is None, running.communicate()
            time.sleep(0.1)
        build = Build.objects.get(configuration=registry_configuration, status=Build.Status.RUNNING)
        time.sleep(3)  # the agent saves its place in the event stream every 2 s
        agent.process.restart()
        result = manage("free_disk_space", "--agent", agent.name, "--required", unattainable(daemon))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "made/b:1" in tags(daemon) and "made/a:1" not in tags(daemon)
        assert kept_reasons(AgentCleanup.objects.get(agent=agent.model))["made/b:1"] == (
            f"used by a build since build {build.configuration.ident} #{build.number} started, which runs on this "
            "agent (started before the agent's restart: what it used before is not known)")
        release.touch()
        out, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 0, out + err
