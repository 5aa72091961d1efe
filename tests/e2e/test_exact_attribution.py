"""Exact attribution (issue 16): each build talks to the daemon through its own Docker endpoint, and its
Docker Info lists exactly what it asked for, even while other builds use the same daemon at the same time.
Real server, agent, daemon (one for all builds) and registry processes; Debian's docker CLI and
docker-compose through the endpoints."""

import os
import shutil
import signal
import socket
import time
import uuid

import docker.errors
import pytest

from builds.cleanup.registry import build_delete, pending_deletions_process
from builds.models import Build, PushedImage, UnattributedOperation
from tests.conftest import IN_CI
from tests.e2e.test_agent import run_build_process as start_build
from tests.e2e.test_agent import wait_for
from tests.factories import BuildConfigurationFactory, LoginConnectionFactory

pytestmark = [pytest.mark.e2e]
DEBIAN_DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI: BuildKit builds without the buildx plugin
MiB = 1024 * 1024


def need(program):
    if not (shutil.which(program) or os.access(program, os.X_OK)):
        pytest.fail(f"{program} is needed") if IN_CI else pytest.skip(f"{program} is not installed")


def finished(process, timeout=300):
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    return out


def answers(path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def pushed_to(docker_client, registry, busybox_image, repository):
    """An image only the registry has (pulling it is a real pull)."""
    reference = f"{registry.address}/{repository}"
    docker_client.images.get(busybox_image).tag(reference, "1")
    for line in docker_client.images.push(reference, "1", auth_config=registry.auth_config, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{reference}:1")
    return f"{reference}:1"


def test_two_builds_at_once_on_one_daemon_each_list_exactly_their_own_operations_and_pushes(
        agent, home, registry_configuration, registry, busybox_image, docker_client, tmp_path):
    other = BuildConfigurationFactory(project=registry_configuration.project)
    LoginConnectionFactory(configuration=other, connection=registry_configuration.logins.get().connection)
    tag = uuid.uuid4().hex[:6]
    processes, names = {}, {}
    for side, configuration in (("a", registry_configuration), ("b", other)):
        base = pushed_to(docker_client, registry, busybox_image, f"base-{side}-{tag}")
        context = tmp_path / f"context-{side}"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {base}\nCOPY note /note\nRUN cat /note\nRUN true\n")
        (context / "note").write_text(f"build {side}\n")
        app = f"{registry.address}/app-{side}-{tag}:1"
        names[side] = {"base": base, "app": app, "container": f"run-{side}-{tag}"}
        # Both builds run each step at the same time: a barrier before each (files in tmp_path).
        steps = [f"docker pull -q {base} >/dev/null",
                 f"DOCKER_BUILDKIT=0 docker build --network none -t {app} {context}",
                 f"docker run --rm --network none --name run-{side}-{tag} {app} cat /note",
                 f"docker push {app}"]
        script = []
        for number, step in enumerate(steps):
            script.append(f"touch {tmp_path}/{side}{number}; while [ ! -e {tmp_path}/a{number} ] || "
                          f"[ ! -e {tmp_path}/b{number} ]; do sleep 0.02; done; {step}")
        processes[side] = start_build(agent, home, configuration, " && ".join(script))
    outputs = {side: finished(process) for side, process in processes.items()}
    for side, own in (("a", "b"), ("b", "a")):
        configuration = registry_configuration if side == "a" else other
        build = Build.objects.get(configuration=configuration)
        assert build.attribution == "exact", outputs[side]
        operations = list(build.operations.all())
        text = repr([(o.action, o.image, o.tag, o.container_name) for o in operations])
        mine, theirs = names[side], names[own]
        for name in (theirs["base"].rsplit(":", 1)[0], theirs["app"].rsplit(":", 1)[0], theirs["container"]):
            assert name not in text, f"build {side} lists build {own}'s {name}: {text}"
        actions = {(o.action, o.image, o.tag) for o in operations}
        assert ("pull", mine["base"].rsplit(":", 1)[0], "1") in actions
        assert ("push", mine["app"].rsplit(":", 1)[0], "1") in actions
        assert ("tag", mine["app"].rsplit(":", 1)[0], "1") in actions
        run = [o for o in operations if o.container_name == mine["container"]]
        assert {o.action for o in run} == {"create", "start", "die", "destroy"}  # --rm: die and destroy follow
        # The classic builder's intermediate containers (two RUN steps at least) are this build's, not the other's.
        intermediate = {o.container_id for o in operations
                        if o.action == "create" and o.container_name != mine["container"]}
        assert len(intermediate) >= 2
        images = list(PushedImage.objects.filter(build=build))
        assert [(i.repository, i.tag) for i in images] == [(f"app-{side}-{tag}", "1")]
        assert not images[0].owner_uncertain and images[0].owner_note == ""
        registry_digest = docker_client.images.get_registry_data(mine["app"], auth_config=registry.auth_config).id
        assert images[0].digest == registry_digest
    assert not agent.process.endpoint_processes()  # each endpoint ended with its build
    # Owner certain: cleaning build a up deletes its image from the registry, and only its image.
    registry_configuration.cleanup_pushed_images = True
    registry_configuration.save()
    build_delete(Build.objects.get(configuration=registry_configuration))
    assert pending_deletions_process() == {"deleted": 1}
    with pytest.raises(docker.errors.NotFound):
        docker_client.images.get_registry_data(names["a"]["app"], auth_config=registry.auth_config)
    assert docker_client.images.get_registry_data(names["b"]["app"], auth_config=registry.auth_config).id


def test_attach_with_stdin_exec_large_builds_and_docker_compose_work_through_a_builds_endpoint(
        agent, home, registry_configuration, busybox_image, tmp_path):
    need(DEBIAN_DOCKER)
    need("docker-compose")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY blob /blob\n")
    with open(context / "blob", "wb") as blob:
        for _ in range(64):
            blob.write(os.urandom(MiB))
    project = f"c{uuid.uuid4().hex[:6]}"
    compose = tmp_path / "compose"
    compose.mkdir()
    (compose / "docker-compose.yml").write_text(
        "version: '2.4'\nservices:\n  hello:\n"
        f"    image: {busybox_image}\n    network_mode: none\n    command: [echo, compose says hi]\n")
    docker = DEBIAN_DOCKER
    script = " && ".join([
        'case "$DOCKER_HOST" in unix://*/docker.sock) ;; *) echo "DOCKER_HOST=$DOCKER_HOST"; exit 9;; esac',
        f"echo piped | {docker} run -i --rm --network none {busybox_image} sh -c 'read line; echo got $line'",
        f"{docker} run -d --name ex-{project} --network none {busybox_image} sleep 60 >/dev/null",
        f"{docker} exec ex-{project} echo exec says hi",
        f"{docker} rm -f ex-{project} >/dev/null",
        f"DOCKER_BUILDKIT=0 {docker} build -q -t large/classic-{project}:1 {context} >/dev/null",
        f"DOCKER_BUILDKIT=1 {docker} build -q -t large/buildkit-{project}:1 {context} >/dev/null",
        f"cd {compose} && docker-compose -p {project} up && docker-compose -p {project} down",
    ])
    out = finished(start_build(agent, home, registry_configuration, script))
    assert "got piped" in out and "exec says hi" in out and "compose says hi" in out
    build = Build.objects.get(configuration=registry_configuration)
    operations = list(build.operations.all())
    assert build.attribution == "exact"
    tags = {(o.image, o.tag) for o in operations if o.action == "tag"}
    assert {(f"large/classic-{project}", "1"), (f"large/buildkit-{project}", "1")} <= tags
    names = {o.container_name for o in operations if o.action == "create"}
    assert f"ex-{project}" in names
    assert any(name.startswith(f"{project}_hello_") or name.startswith(f"{project}-hello-") for name in names), names
    assert any(o.action == "exec" for o in operations)
    assert not UnattributedOperation.objects.filter(agent__name=agent.name).exists()


def test_an_agent_restart_during_a_build_does_not_cut_its_docker_connection(agent, home, registry_configuration,
                                                                            busybox_image, docker_client, tmp_path):
    name = f"restart-{uuid.uuid4().hex[:6]}"
    running = tmp_path / "running"
    script = (f"docker run --name {name} --rm --network none {busybox_image} "
              f"sh -c 'echo first; while [ ! -e /proc/1/root/tmp/go ]; do sleep 0.1; done; echo survived'")
    process = start_build(agent, home, registry_configuration, script)
    try:
        wait_for(lambda: any(c.name == name for c in docker_client.containers.list()), "the build's container")
        endpoints = agent.process.endpoint_processes()
        assert len(endpoints) == 1
        agent.process.stop(keep_data=True)  # SIGTERM: the agent goes, the build's endpoint stays
        assert agent.process.endpoint_processes() == endpoints
        agent.process.start()
        container = docker_client.containers.get(name)
        container.exec_run(["touch", "/tmp/go"])
        running.touch()
        out = finished(process)
    finally:
        process.kill()
    assert "first" in out and "survived" in out  # the attached `docker run` went on through the restart
    build = Build.objects.get(configuration=registry_configuration)
    assert build.status == Build.Status.SUCCEEDED and build.attribution == "exact"
    mine = {o.action for o in build.operations.filter(container_name=name)}
    assert {"create", "start", "die", "destroy"} <= mine
    wait_for(lambda: not agent.process.endpoint_processes(), "the endpoint to end with its build")


def test_what_no_build_asked_for_is_recorded_on_the_agent_and_not_on_the_build(agent, home, registry_configuration,
                                                                              busybox_image, docker_client, tmp_path):
    go, done = tmp_path / "go", tmp_path / "done"
    own = f"own/{uuid.uuid4().hex[:6]}"
    stray = f"stray/{uuid.uuid4().hex[:6]}"
    script = f"docker tag {busybox_image} {own}:1 && touch {done} && while [ ! -e {go} ]; do sleep 0.05; done"
    process = start_build(agent, home, registry_configuration, script)
    try:
        wait_for(done.exists, "the build's own tag")
        docker_client.images.get(busybox_image).tag(stray, "1")  # the daemon's socket, not the build's endpoint
        time.sleep(0.5)
        go.touch()
        finished(process)
    finally:
        process.kill()
    build = Build.objects.get(configuration=registry_configuration)
    assert list(build.operations.filter(action="tag").values_list("image", flat=True)) == [own]
    wait_for(lambda: UnattributedOperation.objects.filter(image=stray).exists(), "the stray tag on the agent")
    stray_row = UnattributedOperation.objects.get(image=stray)
    assert stray_row.agent.name == agent.name and stray_row.action == "tag"


def test_a_configuration_that_opts_out_talks_to_the_daemon_and_is_attributed_by_time(agent, home,
                                                                                      registry_configuration):
    registry_configuration.exact_attribution = False
    registry_configuration.save()
    out = finished(start_build(agent, home, registry_configuration, 'echo "host=$DOCKER_HOST"'))
    assert f"host={agent.docker_host}" in out
    build = Build.objects.get(configuration=registry_configuration)
    assert build.attribution == "time" and not agent.process.endpoint_processes()


def test_an_endpoint_that_dies_during_its_build_is_started_again_on_the_same_socket(agent, home,
                                                                                     registry_configuration, tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = (f"docker version >/dev/null && touch {ready} && while [ ! -e {go} ]; do sleep 0.05; done && "
              "docker version --format 'again {{.Server.APIVersion}}'")
    process = start_build(agent, home, registry_configuration, script)
    try:
        wait_for(ready.exists, "the build's first docker command")
        [first] = agent.process.endpoint_processes()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: agent.process.endpoint_processes() not in ([], [first]), "the heartbeat to start it again")
        [sock] = (agent.dir / "configs").glob("*/docker.sock")
        wait_for(lambda: answers(sock), "the new endpoint to listen")
        go.touch()
        out = finished(process)
    finally:
        process.kill()
    assert "again " in out
