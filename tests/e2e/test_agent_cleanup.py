"""Agent clean-up (Free Disk Space) on a real daemon whose data lives on a small tmpfs of its own,
so that free space moves only with what the test does."""

import os
import shutil
import subprocess

import pytest

from builds.models import AgentCleanup, AgentImage
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
def small_agent(start_service, start_agent):
    daemon = start_service(SmallDiskDaemon())
    client = daemon.client()
    import_busybox_image(client)  # made by no build: must stay
    client.close()
    agent = start_agent(docker_host=daemon.host, DOCKERSUPPORT_DOCKER_DATA_PATH=daemon.data_root)
    return agent, daemon


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
