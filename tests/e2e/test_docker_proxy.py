"""A build's Docker endpoint (agent.docker_proxy, issue 16): Debian's docker CLI works through it as it
does directly — API calls, run with attach, exec, classic and BuildKit builds — and the proxy reports the
containers it saw created (the journal of facts of the proxy process: test_docker_proxy_journal.py)."""

import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time

import pytest

from agent.docker_proxy import DockerProxy
from tests.conftest import IN_CI
from tests.harness import short_tempdir

pytestmark = [pytest.mark.e2e]
DEBIAN_DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI builds with BuildKit without the buildx plugin
MiB = 1024 * 1024


def proxy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("docker-proxy")]


@pytest.fixture
def proxy(docker_daemon):
    if not os.access(DEBIAN_DOCKER, os.X_OK):
        pytest.fail(f"{DEBIAN_DOCKER} (Debian's docker.io) is needed") if IN_CI else \
            pytest.skip(f"{DEBIAN_DOCKER} (Debian's docker.io) is not installed")
    root = short_tempdir("dp-")
    seen = []
    started = DockerProxy(os.path.join(root, "docker.sock"), docker_daemon.host.removeprefix("unix://"),
                          on_fact=seen.append).start()
    started.seen = seen
    yield started
    started.stop()
    shutil.rmtree(root, ignore_errors=True)
    assert not proxy_threads()


@pytest.fixture
def docker(proxy, tmp_path):
    """docker(*args, input=None, **env) through the proxy: the completed process (check=True)."""

    def run(*args, input=None, **env):
        environment = {**os.environ, "DOCKER_HOST": f"unix://{proxy.listen_path}", "HOME": str(tmp_path), **env}
        result = subprocess.run([DEBIAN_DOCKER, *args], env=environment, input=input, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result

    return run


def test_docker_version_answers_through_the_proxy_as_directly(docker, docker_daemon, tmp_path):
    through = docker("version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}").stdout
    direct = subprocess.run([DEBIAN_DOCKER, "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
                            env={**os.environ, "DOCKER_HOST": docker_daemon.host, "HOME": str(tmp_path)},
                            capture_output=True, text=True, check=True).stdout
    assert through == direct and through.strip()


def test_run_prints_the_containers_output(docker, busybox_image):
    assert docker("run", "--rm", "--network", "none", busybox_image, "echo", "hi").stdout == "hi\n"


def test_run_with_stdin_attached_gets_the_input_and_returns_the_output(docker, busybox_image):
    result = docker("run", "-i", "--rm", "--network", "none", busybox_image, "cat", input="hello\n")
    assert result.stdout == "hello\n"


def test_exec_into_a_running_container(docker, busybox_image, docker_client):
    container = docker("run", "-d", "--network", "none", busybox_image, "sleep", "300").stdout.strip()
    try:
        assert docker("exec", container, "echo", "in-exec").stdout == "in-exec\n"
    finally:
        docker_client.containers.get(container).remove(force=True)


def test_the_created_containers_id_is_reported_with_its_request(docker, proxy, busybox_image, docker_client):
    container = docker("create", "--network", "none", "--name", "proxy-created", busybox_image, "true").stdout.strip()
    try:
        (created,) = [f for f in proxy.seen if f["kind"] == "request" and f["path"] == "/containers/create"]
        assert created["method"] == "POST" and created["query"]["name"] == ["proxy-created"]
        (response,) = [f for f in proxy.seen if f["kind"] == "response" and f["request"] == created["request"]]
        assert response["status"] == 201 and response["container"] == container
    finally:
        docker_client.containers.get(container).remove(force=True)


def big_context(tmp_path, busybox_image):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY blob /blob\n")
    with open(context / "blob", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    return context


@pytest.mark.parametrize("buildkit", ["0", "1"], ids=["classic", "buildkit"])
def test_a_build_with_a_64_mib_context_gets_all_of_it(docker, busybox_image, docker_client, tmp_path, buildkit):
    tag = f"proxy-test/build-{buildkit}:1"
    docker("build", "-q", "--network", "none", "-t", tag, str(big_context(tmp_path, busybox_image)),
           DOCKER_BUILDKIT=buildkit)
    try:
        size = docker("run", "--rm", "--network", "none", tag, "stat", "-c", "%s", "/blob").stdout
        assert size == f"{64 * MiB}\n"
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_client_gone_in_the_middle_of_a_large_post_does_not_hang_the_proxy(docker, proxy):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(proxy.listen_path)
    member = tarfile.TarInfo("blob")  # a context the daemon takes in as it comes, cut off at 16 of 512 MiB
    member.size = 512 * MiB
    head = member.tobuf()
    sock.sendall(b"POST /v1.41/build?t=proxy-test/never:1 HTTP/1.1\r\nHost: docker\r\n"
                 b"Content-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n%s" % (len(head) + 513 * MiB, head))
    for _ in range(16):
        sock.sendall(os.urandom(MiB))
    sock.close()
    deadline = time.monotonic() + 60  # a bound against hanging, not a measure
    while proxy._connections:
        assert time.monotonic() < deadline, "the proxy kept the abandoned connection"
        time.sleep(0.05)
    assert docker("version", "--format", "{{.Server.Version}}").stdout.strip()


def test_stop_closes_everything_and_leaves_no_thread(busybox_image, docker_daemon, tmp_path):
    if not os.access(DEBIAN_DOCKER, os.X_OK):
        pytest.fail(f"{DEBIAN_DOCKER} (Debian's docker.io) is needed") if IN_CI else \
            pytest.skip(f"{DEBIAN_DOCKER} (Debian's docker.io) is not installed")
    root = short_tempdir("dp-")
    stopped = DockerProxy(os.path.join(root, "docker.sock"), docker_daemon.host.removeprefix("unix://")).start()
    environment = {**os.environ, "DOCKER_HOST": f"unix://{stopped.listen_path}", "HOME": str(tmp_path)}
    direct = {**environment, "DOCKER_HOST": docker_daemon.host}
    name = "proxy-attached"
    attached = subprocess.Popen([DEBIAN_DOCKER, "run", "--rm", "--name", name, "--network", "none", busybox_image,
                                 "sleep", "300"], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60  # a bound against hanging, not a measure
        while name not in subprocess.run([DEBIAN_DOCKER, "ps", "--format", "{{.Names}}"], env=direct,
                                         capture_output=True, text=True).stdout.split():
            assert time.monotonic() < deadline and attached.poll() is None, attached.stderr.read()
            time.sleep(0.1)
        stopped.stop()
        assert not proxy_threads()
        assert not os.path.exists(stopped.listen_path)
        attached.wait(timeout=60)  # its connection closed under it: the CLI ends
    finally:
        stopped.stop()
        attached.kill()
        attached.wait()
        subprocess.run([DEBIAN_DOCKER, "rm", "-f", name], env=direct, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
