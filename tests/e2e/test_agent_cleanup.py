"""Agent clean-up (Free Disk Space) on a real daemon whose data lives on a small tmpfs of its own,
so that free space moves only with what the test does."""

import os
import subprocess

import pytest

from builds.agent_cleanup import free_bytes
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
def small_agent(start_service, transactional_db):
    daemon = start_service(SmallDiskDaemon())
    client = daemon.client()
    import_busybox_image(client)  # made by no build: must stay
    client.close()
    return AgentFactory(docker_host=daemon.host, docker_data_path=daemon.data_root), daemon


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
                   DOCKER_BUILDKIT="0")
    assert first.returncode == 0, first.stdout + first.stderr
    second = manage("run_build", configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                    "docker create --network none --name holds-c made/c:1 true >/dev/null && "
                    "docker run --rm --network none made/a:1 true")
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
    assert {"made/a:1", "made/b:1", "made/c:1"} <= set(AgentImage.objects.filter(agent=agent)
                                                        .values_list("reference", flat=True))
    _, free = free_bytes(agent)
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
    record = AgentCleanup.objects.get(agent=agent)
    assert record.met and [item["references"] for item in record.removed] == [["made/b:1"]]
    assert record.bytes_reclaimed == record.free_after - record.free_before >= 8 * MiB


def test_a_requirement_that_cannot_be_met_reports_the_shortfall(small_agent, manage, tmp_path,
                                                                 registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    _, free = free_bytes(agent)
    result = manage("free_disk_space", "--agent", agent.name, "--required", f"{(free + 200 * MiB) // MiB}M")
    assert result.returncode == 1
    assert "cannot free enough: short by" in result.stdout
    remaining = tags(daemon)
    # Everything builds made and nothing uses is gone; the image of a stopped container and the
    # image no build made stay.
    assert {"made/a:1", "made/b:1"}.isdisjoint(remaining)
    assert {"made/c:1", "dockersupport-test/busybox:latest"} <= remaining
    assert not AgentCleanup.objects.get(agent=agent).met


def test_run_build_frees_space_before_the_command(small_agent, manage, tmp_path, registry_configuration):
    agent, daemon = small_agent
    build_images(manage, registry_configuration, agent, tmp_path)
    _, free = free_bytes(agent)
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name,
                    "--required-free", f"{(free + 4 * MiB) // 1024}K", "--", "true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed made/b:1" in result.stdout and "made/b:1" not in tags(daemon)
    too_much = manage("run_build", registry_configuration.ident, "--agent", agent.name,
                      "--required-free", "10T", "--", "touch", str(tmp_path / "ran"))
    assert too_much.returncode == 1
    assert "short by" in too_much.stderr and "the command was not run" in too_much.stderr
    assert not (tmp_path / "ran").exists()


def test_a_data_path_that_does_not_exist_names_the_setting(manage, transactional_db, tmp_path):
    agent = AgentFactory(docker_data_path=str(tmp_path / "missing"))
    result = manage("free_disk_space", "--agent", agent.name, "--required", "1M")
    assert result.returncode == 1
    assert f"the Docker data path {tmp_path / 'missing'} of agent {agent.name} does not exist" in result.stderr
    assert f"the 'Docker data path' of agent {agent.name}" in result.stderr
    plain = AgentFactory(docker_data_path="")
    result = manage("free_disk_space", "--agent", plain.name, "--required", "1M",
                    DOCKERSUPPORT_DOCKER_DATA_PATH=str(tmp_path / "nowhere"))
    assert "it comes from DOCKERSUPPORT_DOCKER_DATA_PATH" in result.stderr


def test_a_bad_size_is_refused(manage, transactional_db):
    agent = AgentFactory()
    result = manage("free_disk_space", "--agent", agent.name, "--required", "5X")
    assert result.returncode == 1
    assert "'5X' is not a size" in result.stderr
