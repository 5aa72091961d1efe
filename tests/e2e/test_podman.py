"""An agent driving Podman instead of Docker (issue 17): Debian's podman serving its Docker-compatible API on a
private socket (tests/harness/podman.py), the real server, agent and registry. Builds use the docker CLI against
it or the podman CLI (credentials in REGISTRY_AUTH_FILE), both through the build's own endpoint (DOCKER_HOST, and
CONTAINER_HOST for the podman CLI, which then goes remote: Podman's libpod API); both are recorded from Podman's
events, and the agent's clean-up frees Podman's disk."""

import os
import uuid

import pytest
import requests

from builds.cleanup.registry import build_delete, pending_deletions_process
from builds.models import Build, PushedImage, UnattributedOperation
from connections.registries import MANIFEST_TYPES
from tests.conftest import start
from tests.e2e.test_agent import run_build_process, wait_for
from tests.factories import AgentFactory, BuildConfigurationFactory, LoginConnectionFactory
from tests.harness.podman import Podman

pytestmark = [pytest.mark.e2e]
BUSYBOX = "localhost/dockersupport-test/busybox:latest"


@pytest.fixture(scope="module")
def podman():
    """A private Podman with the busybox test image."""
    service = start(Podman())
    service.import_busybox(BUSYBOX)
    yield service
    service.stop()


@pytest.fixture
def configuration(registry, transactional_db):
    """A build configuration that logs in to the harness's registry as localhost:PORT: Podman's API checks a
    login over plain http for localhost alone (tests/harness/podman.py)."""
    configuration = BuildConfigurationFactory()
    LoginConnectionFactory(
        configuration=configuration, connection__project=configuration.project,
        connection__registry=local(registry), connection__username=registry.username,
        connection__password=registry.password)
    return configuration


def local(registry):
    return f"localhost:{registry.port}"


@pytest.fixture
def podman_agent(start_agent, podman):
    """An agent on the Podman (--engine podman) whose clean-up may remove images made a moment ago."""
    return start_agent(name=AgentFactory(min_image_age=0).name, docker_host=podman.host,
                       DOCKERSUPPORT_ENGINE="podman", DOCKERSUPPORT_DOCKER_DATA_PATH=f"{podman.root}/storage")


def registry_digest(registry, repository, tag):
    """What the registry itself answers for the tag (None: it has no such tag)."""
    response = requests.head(f"http://{local(registry)}/v2/{repository}/manifests/{tag}", timeout=10,
                             auth=(registry.username, registry.password), headers={"Accept": MANIFEST_TYPES})
    return response.headers["Docker-Content-Digest"] if response.status_code == 200 else None


def in_registry(podman, registry, repository):
    """An image only the registry has (pushed by the podman CLI, then removed here): pulling it is a real pull."""
    reference = f"{local(registry)}/{repository}:1"
    podman.podman("tag", BUSYBOX, reference)
    podman.podman("push", "--creds", f"{registry.username}:{registry.password}", reference)
    podman.podman("rmi", reference)
    return reference


def finished(process, timeout=300):
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    return out + err


def test_docker_cli_builds_on_podman_are_recorded_exactly_with_the_registrys_digest_and_cleaned_up(
        podman, podman_agent, home, configuration, registry, tmp_path):
    tag = uuid.uuid4().hex[:6]
    base = in_registry(podman, registry, f"base-{tag}")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN true\n")
    app = f"{local(registry)}/app-{tag}:1"
    script = " && ".join([
        f"docker pull -q {base} >/dev/null", f"docker build -q -t {app} {context}",
        f"docker run --rm --network none --name run-{tag} {app} true", f"docker push {app}"])
    output = finished(run_build_process(podman_agent, home, configuration, script))
    build = Build.objects.get(configuration=configuration)
    assert build.status == Build.Status.SUCCEEDED and build.attribution == "exact", output
    wait_for(lambda: build.operations.filter(action="push").exists(), "the push to be recorded")
    operations = list(build.operations.all())
    actions = {(o.action, o.image, o.tag) for o in operations}
    assert ("pull", base.rsplit(":", 1)[0], "1") in actions
    assert ("push", app.rsplit(":", 1)[0], "1") in actions
    assert {o.action for o in operations if o.container_name == f"run-{tag}"} == {"create", "start", "die",
                                                                                   "destroy"}
    assert [o.exit_code for o in operations if o.container_name == f"run-{tag}" and o.action == "die"] == [0]
    # Podman converts the image on push: the digest is what the push answered, the registry's, never its local one
    pushed = PushedImage.objects.get(build=build)
    assert pushed.digest == registry_digest(registry, f"app-{tag}", "1") and not pushed.owner_uncertain
    configuration.cleanup_pushed_images = True
    configuration.save()
    build_delete(build)
    assert pending_deletions_process() == {"deleted": 1}
    assert registry_digest(registry, f"app-{tag}", "1") is None
    assert registry_digest(registry, f"base-{tag}", "1")  # pulled, not pushed: stays


def test_podman_cli_builds_log_in_through_registry_auth_file_and_are_recorded_by_time(
        podman, podman_agent, home, configuration, registry):
    # Without an endpoint of its own the build has no CONTAINER_HOST: the podman CLI works on Podman's storage itself
    configuration.exact_attribution = False
    configuration.save()
    tag = uuid.uuid4().hex[:6]
    app = f"{local(registry)}/podman-{tag}:1"
    script = " && ".join([
        'test -s "$REGISTRY_AUTH_FILE" && echo "auth file $REGISTRY_AUTH_FILE"',
        f"podman tag {BUSYBOX} {app}",
        # Without the build's files the registry refuses the push: the credentials come from them alone (podman
        # 4.3 reads $DOCKER_CONFIG/config.json too, when REGISTRY_AUTH_FILE is not set)
        f"if env -u REGISTRY_AUTH_FILE -u DOCKER_CONFIG podman push {app} 2>/dev/null; then exit 9; fi",
        f"env -u DOCKER_CONFIG podman push {app}",
        f"podman push {app}",
        f"podman run --rm --network none --name prun-{tag} {BUSYBOX} sh -c 'exit 4' || test $? = 4",
    ])
    output = finished(run_build_process(podman_agent, home, configuration, script, **podman.cli_env({})))
    auth_file = next(line.split(" ", 2)[2] for line in output.splitlines() if line.startswith("auth file "))
    assert registry_digest(registry, f"podman-{tag}", "1")
    build = Build.objects.get(configuration=configuration)
    assert build.status == Build.Status.SUCCEEDED and build.attribution == "time"
    assert auth_file.startswith(str(podman_agent.dir)) and not os.path.exists(auth_file)  # erased at the finish
    wait_for(lambda: build.operations.filter(action="destroy").exists(), "the container's removal to be recorded")
    operations = list(build.operations.all())
    assert ("push", app.rsplit(":", 1)[0], "1") in {(o.action, o.image, o.tag) for o in operations}
    run = {o.action: o for o in operations if o.container_name == f"prun-{tag}"}
    assert set(run) == {"create", "start", "die", "destroy"} and run["die"].exit_code == 4
    # Podman tells no pushed digest: the image is recorded, and clean-up keeps it rather than guess
    pushed = PushedImage.objects.get(build=build)
    assert (pushed.repository, pushed.tag, pushed.digest) == (f"podman-{tag}", "1", "")
    configuration.cleanup_pushed_images = True
    configuration.save()
    build_delete(build)
    pending_deletions_process()
    pushed = PushedImage.objects.get(pk=pushed.pk)
    assert pushed.cleanup_status == PushedImage.CleanupStatus.KEPT
    assert "digest was not recorded" in pushed.cleanup_reason
    assert registry_digest(registry, f"podman-{tag}", "1")


def test_podman_cli_builds_go_through_their_endpoint_and_are_recorded_exactly(podman, podman_agent, home,
                                                                              configuration, registry, tmp_path):
    tag = uuid.uuid4().hex[:6]
    base = in_registry(podman, registry, f"pbase-{tag}")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN true\n")
    app, again = f"{local(registry)}/papp-{tag}:1", f"{local(registry)}/papp-{tag}:2"
    script = " && ".join([
        'test "$CONTAINER_HOST" = "$DOCKER_HOST" && echo "endpoint $CONTAINER_HOST"',
        # The remote podman CLI sends the build's credentials (REGISTRY_AUTH_FILE) itself: without them, refused
        f"if env -u REGISTRY_AUTH_FILE -u DOCKER_CONFIG podman pull -q {base} 2>/dev/null; then exit 9; fi",
        f"podman pull -q {base} >/dev/null", f"podman build -q -t {app} {context}",
        f"podman run --rm --network none --name prun-{tag} {app} sh -c 'exit 3' || test $? = 3",
        f"podman tag {app} {again}", f"podman push -q {again}"])
    # The podman CLI gets no storage configuration of the harness's Podman: it reaches it through the endpoint alone
    output = finished(run_build_process(podman_agent, home, configuration, script))
    build = Build.objects.get(configuration=configuration)
    assert build.status == Build.Status.SUCCEEDED and build.attribution == "exact", output
    endpoint = next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("endpoint "))
    assert endpoint.startswith(f"unix://{podman_agent.dir}") and endpoint.endswith("/docker.sock")
    wait_for(lambda: build.operations.filter(action="push").exists(), "the push to be recorded")
    wait_for(lambda: build.operations.filter(action="destroy").exists(), "the container's removal to be recorded")
    operations = list(build.operations.all())
    actions = {(o.action, o.image, o.tag) for o in operations}
    name = app.rsplit(":", 1)[0]
    assert {("pull", base.rsplit(":", 1)[0], "1"), ("build", name, "1"), ("tag", name, "2"),
            ("push", name, "2")} <= actions, actions
    run = {o.action: o for o in operations if o.container_name == f"prun-{tag}"}
    assert set(run) == {"create", "start", "die", "destroy"} and run["die"].exit_code == 3
    started = int(build.started_at.timestamp() * 1_000_000_000)
    assert not UnattributedOperation.objects.filter(agent__name=podman_agent.name, time_nano__gte=started).exists()
    pushed = PushedImage.objects.get(build=build)
    assert (pushed.repository, pushed.tag) == (f"papp-{tag}", "2") and registry_digest(registry, f"papp-{tag}", "2")
    version = tuple(int(part) for part in podman.podman("version", "--format", "{{.Client.Version}}").stdout
                    .strip().split("-")[0].split(".")[:2])
    if version >= (4, 6):  # its libpod push answers the registry's digest (manifestdigest)
        assert pushed.digest == registry_digest(registry, f"papp-{tag}", "2") and not pushed.owner_uncertain
    else:  # Podman 4.3's says none: the build asked for the push, but nothing says it did it; kept, never guessed
        assert pushed.digest == "" and pushed.owner_uncertain


def test_an_agent_whose_engine_is_not_what_serves_docker_host_says_so(start_agent, podman, docker_daemon):
    on_podman = start_agent(docker_host=podman.host)  # --engine docker (the default)
    on_docker = start_agent(docker_host=docker_daemon.host, DOCKERSUPPORT_ENGINE="podman")
    for agent, wanted in ((on_podman, "--engine podman"), (on_docker, "--engine docker")):
        wait_for(lambda agent=agent: agent.model.daemon_ok is False, "the agent to report its daemon")
        assert wanted in agent.model.daemon_error
    assert on_podman.model.daemon_version.startswith("Podman ")


def test_the_agents_clean_up_removes_what_builds_left_on_podman(podman, podman_agent, manage, home,
                                                                configuration, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nARG NAME\nRUN head -c 1048576 /dev/urandom > /big-$NAME\n")
    name = f"made-{uuid.uuid4().hex[:6]}"
    script = " && ".join(f"docker build -q --build-arg NAME={n} -t {name}/{n}:1 {context}" for n in "ab")
    finished(run_build_process(podman_agent, home, configuration, script))
    build = Build.objects.get(configuration=configuration)
    wait_for(lambda: build.operations.filter(action="build").count() == 2, "the builds to be recorded")
    client = podman.client()
    try:
        made = {t for image in client.images.list() for t in image.tags if f"/{name}/" in t}
        assert len(made) == 2, made  # docker.io/made-…/a:1 as Podman's Docker API names them
        result = manage("free_disk_space", "--agent", podman_agent.name, "--required", "100T")
        assert result.returncode == 1 and "cannot free enough" in result.stdout, result.stdout + result.stderr
        tags = {t for image in client.images.list() for t in image.tags}
    finally:
        client.close()
    assert not made & tags, result.stdout
    assert BUSYBOX in tags  # no build made it: it stays
