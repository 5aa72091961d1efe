"""The proxy as a process (`python -m agent.docker_proxy`, issue 16) on a real daemon and registry, with
Debian's docker CLI: its journal holds the facts of what the CLI did through it (requests, the ids of
created containers and execs, a classic build's intermediate containers, built images, pushed and
pulled digests, what rmi untagged and deleted); SIGTERM stops it cleanly; it gives its socket to the
build's user, replaces a stale socket and continues an existing journal."""

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from docker import errors as docker_errors

from tests.conftest import IN_CI
from tests.harness import short_tempdir

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
DEBIAN_DOCKER = "/usr/bin/docker"  # Debian's docker.io CLI builds with BuildKit without the buildx plugin
NOBODY = 65534


def journal_facts(path):
    """The facts of a journal's whole lines, as the agent reads it (a line being written is not one yet)."""
    return [json.loads(line) for line in Path(path).read_text().split("\n")[:-1]]


def wait_for(condition, what, process=None):
    deadline = time.monotonic() + 60  # a bound against hanging, not a measure
    while not (result := condition()):
        assert process is None or process.poll() is None, f"the proxy ended: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.02)
    return result


class ProxyProcess:
    """`python -m agent.docker_proxy` in a short folder of its own: .socket, .journal, .facts()."""

    def __init__(self, daemon_socket, root=None, owner=None):
        self.root = root or short_tempdir("dpj-")
        self.socket = os.path.join(self.root, "docker.sock")
        self.journal = os.path.join(self.root, "journal")
        self.command = [sys.executable, "-m", "agent.docker_proxy", "--listen", self.socket,
                        "--daemon", daemon_socket, "--journal", self.journal]
        if owner is not None:
            self.command += ["--owner", str(owner)]
        self.process = None

    def start(self):
        """Started, and listening (its "listening" fact written): self."""
        listening = len(self.of("listening")) + 1
        if self.process:
            self.process.stderr.close()
        self.process = subprocess.Popen(self.command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(self.of("listening")) == listening, "listening fact", self.process)
        return self

    def stop(self):
        """SIGTERM; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def facts(self):
        return journal_facts(self.journal) if os.path.exists(self.journal) else []

    def of(self, kind, request=None):
        return [f for f in self.facts() if f["kind"] == kind and request in (None, f.get("request"))]

    def requests(self, method, path):
        """The "request" facts of method and path (a regular expression, matched whole)."""
        return [f for f in self.of("request") if f["method"] == method and re.fullmatch(path, f["path"])]

    def close(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process:
            self.process.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


def need_debian_docker():
    if not os.access(DEBIAN_DOCKER, os.X_OK):
        pytest.fail(f"{DEBIAN_DOCKER} (Debian's docker.io) is needed") if IN_CI else \
            pytest.skip(f"{DEBIAN_DOCKER} (Debian's docker.io) is not installed")


@pytest.fixture
def daemon_socket(docker_daemon):
    return docker_daemon.host.removeprefix("unix://")


@pytest.fixture
def proxy(daemon_socket):
    need_debian_docker()
    started = ProxyProcess(daemon_socket).start()
    yield started
    started.close()


@pytest.fixture
def docker(proxy, registry, tmp_path):
    """docker(*args, **env) through the proxy, logged in to the registry: the completed process (check=True)."""
    config = tmp_path / "docker-config"
    config.mkdir()
    login = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": login}}}))

    def run(*args, **env):
        environment = {**os.environ, "DOCKER_HOST": f"unix://{proxy.socket}", "DOCKER_CONFIG": str(config), **env}
        result = subprocess.run([DEBIAN_DOCKER, *args], env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result

    return run


def response_of(proxy, request):
    (response,) = proxy.of("response", request["request"])
    return response


def test_run_exec_and_rm_are_in_the_journal_with_the_ids_docker_printed(proxy, docker, busybox_image, docker_client):
    assert docker("run", "--rm", "--network", "none", busybox_image, "echo", "hi").stdout == "hi\n"
    container = docker("run", "-d", "--network", "none", "--name", "journal-exec", busybox_image,
                       "sleep", "300").stdout.strip()
    try:
        assert docker("exec", "journal-exec", "echo", "in-exec").stdout == "in-exec\n"
    finally:
        docker("rm", "-f", "journal-exec")
    run_rm, run_d = proxy.requests("POST", "/containers/create")
    assert run_d["query"]["name"] == ["journal-exec"] and response_of(proxy, run_d)["container"] == container
    removed = response_of(proxy, run_rm)["container"]
    for step in ("attach", "wait", "start"):  # run --rm: by the id create answered
        assert proxy.requests("POST", f"/containers/{removed}/{step}"), step
    (exec_create,) = proxy.requests("POST", "/containers/journal-exec/exec")
    exec_id = response_of(proxy, exec_create)["exec"]
    assert re.fullmatch("[0-9a-f]{64}", exec_id) and proxy.requests("POST", f"/exec/{exec_id}/start")
    (rm,) = proxy.requests("DELETE", "/containers/journal-exec")
    assert rm["query"]["force"] == ["1"] and response_of(proxy, rm)["status"] == 204
    with pytest.raises(docker_errors.NotFound):
        docker_client.containers.get(container)


def test_a_classic_builds_intermediate_containers_and_image_are_in_the_journal(proxy, docker, busybox_image,
                                                                            docker_client, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY file /file\nRUN true\nENV BUILT=1\n"
                                        'CMD ["cat", "/file"]\n')
    (context / "file").write_text(str(time.time_ns()))  # no cache: each run builds anew
    began = time.time_ns()
    docker("build", "--network", "none", "-t", "proxy-test/journal-classic:1", str(context), DOCKER_BUILDKIT="0")
    ended = time.time_ns()
    try:
        (build,) = proxy.requests("POST", "/build")
        assert build["query"]["t"] == ["proxy-test/journal-classic:1"]
        (built,) = proxy.of("built", build["request"])
        assert built["image_id"] == docker_client.images.get("proxy-test/journal-classic:1").id
        created = [e["id"] for e in docker_client.events(since=began // 10**9 - 1, until=ended // 10**9 + 1,
                                                         filters={"type": "container", "event": "create"},
                                                         decode=True)
                   if began <= e["timeNano"] <= ended]
        said = [f["container"] for f in proxy.of("container", build["request"])]
        assert len(created) == len(said) >= 3  # RUN, ENV and CMD each create one
        assert sorted(created) == sorted(next(c for c in created if c.startswith(prefix)) for prefix in said)
    finally:
        docker_client.images.remove("proxy-test/journal-classic:1", force=True)


def test_a_buildkit_builds_image_is_in_the_journal(proxy, docker, busybox_image, docker_client, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY file /file\n")
    (context / "file").write_text(str(time.time_ns()))
    docker("build", "-t", "proxy-test/journal-buildkit:1", str(context), DOCKER_BUILDKIT="1")
    try:
        (build,) = proxy.requests("POST", "/build")
        assert build["query"]["t"] == ["proxy-test/journal-buildkit:1"]
        assert "version" not in build["query"]  # BuildKit's version=2: not what the build names, not kept
        (built,) = proxy.of("built", build["request"])
        assert built["image_id"] == docker_client.images.get("proxy-test/journal-buildkit:1").id
        assert proxy.requests("POST", "/session")
    finally:
        docker_client.images.remove("proxy-test/journal-buildkit:1", force=True)


@pytest.mark.parametrize("buildkit", ["0", "1"], ids=["classic", "buildkit"])
def test_a_quiet_builds_image_is_in_the_journal(proxy, docker, busybox_image, tmp_path, buildkit):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nCOPY file /file\n")
    (context / "file").write_text(str(time.time_ns()))
    printed = docker("build", "-q", "--network", "none", str(context), DOCKER_BUILDKIT=buildkit).stdout.strip()
    try:
        (build,) = proxy.requests("POST", "/build")
        assert build["query"]["q"] == ["1"]
        assert [f["image_id"] for f in proxy.of("built", build["request"])] == [printed]
    finally:
        docker("rmi", printed)


def image_of_its_own(docker_client, repository, tag):
    """An image no other test shares (one small file of its own), named repository:tag: its id."""
    content = str(time.time_ns()).encode()
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        member = tarfile.TarInfo("stamp")
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content))
    docker_client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
    return docker_client.images.get(f"{repository}:{tag}").id


def test_push_pull_and_rmi_are_in_the_journal_with_the_registrys_digest(proxy, docker, registry, docker_client):
    repository = f"{registry.address}/proxy-test/journal"
    image_id = image_of_its_own(docker_client, repository, "1")
    try:
        printed = docker("push", f"{repository}:1").stdout
        (push,) = proxy.requests("POST", f"/images/{re.escape(repository)}/push")
        assert push["query"]["tag"] == ["1"]
        (pushed,) = proxy.of("pushed", push["request"])
        digest = re.search(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)", printed)
        assert (pushed["tag"], pushed["digest"], pushed["size"]) == ("1", digest[1], int(digest[2]))
        assert docker_client.images.get(f"{repository}:1").attrs["RepoDigests"] == [f"{repository}@{digest[1]}"]

        docker("pull", f"{repository}:1")
        (pull,) = proxy.requests("POST", "/images/create")
        assert pull["query"]["fromImage"] == [repository] and pull["query"]["tag"] == ["1"]
        assert [f["digest"] for f in proxy.of("pulled", pull["request"])] == [digest[1]]

        docker("tag", f"{repository}:1", f"{repository}:only")
        docker("rmi", f"{repository}:1")
        docker("rmi", f"{repository}:only")  # its last name: the image goes, with the digest's name
        untag, delete = proxy.requests("DELETE", "/images/.+")
        assert untag["path"] == f"/images/{repository}:1" and delete["path"] == f"/images/{repository}:only"
        untagged = response_of(proxy, untag)
        assert (untagged["untagged"], untagged["deleted"]) == ([f"{repository}:1"], [])
        deleted = response_of(proxy, delete)
        assert sorted(deleted["untagged"]) == sorted([f"{repository}:only", f"{repository}@{digest[1]}"])
        assert deleted["deleted"][0] == image_id
    finally:
        for name in (f"{repository}:1", f"{repository}:only"):
            try:
                docker_client.images.remove(name, force=True)
            except docker_errors.NotFound:  # removed by the test
                pass


def test_each_request_is_begun_answered_and_ended_in_order_and_sigterm_stops_cleanly(proxy, docker, busybox_image):
    open_connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    open_connection.connect(proxy.socket)
    docker("run", "--rm", "--network", "none", busybox_image, "true")
    docker("version")
    assert proxy.stop() == 0
    assert open_connection.recv(1) == b""  # closed by the proxy
    open_connection.close()
    assert not os.path.exists(proxy.socket)
    facts = proxy.facts()
    assert facts[0]["kind"] == "listening" and facts[0]["pid"] == proxy.process.pid
    assert facts[-1]["kind"] == "stopped"
    assert [f["time_nano"] for f in facts] == sorted(f["time_nano"] for f in facts)
    kinds = {}
    for fact in facts[1:-1]:
        kinds.setdefault(fact["request"], []).append(fact["kind"])
    assert len(kinds) >= 6  # run: ping, create, attach, wait, start; version: /version
    for request, seen in kinds.items():
        assert seen[0] == "request" and seen[-1] == "end" and seen.count("end") == 1, (request, seen)
        assert seen.count("response") == 1 and seen[1] == "response", (request, seen)
    assert stat.S_IMODE(os.stat(proxy.journal).st_mode) == 0o600
    text = Path(proxy.journal).read_text()
    assert text.endswith("\n") and text.splitlines()[-1].startswith('{"kind":"stopped","time_nano":')


def test_a_restarted_proxy_continues_the_journal_over_a_stale_socket(proxy, daemon_socket, docker):
    docker("version")
    proxy.process.kill()  # died: its socket stays behind, nobody listens on it
    proxy.process.wait()
    assert stat.S_ISSOCK(os.lstat(proxy.socket).st_mode)
    before = proxy.facts()
    proxy.start()
    docker("version")
    assert proxy.stop() == 0
    after = proxy.facts()
    assert after[:len(before)] == before
    assert [f["kind"] for f in after].count("listening") == 2 and after[-1]["kind"] == "stopped"
    numbered_before = [f["request"] for f in before if f["kind"] == "request"]
    numbered_after = [f["request"] for f in after[len(before):] if f["kind"] == "request"]
    assert numbered_after and min(numbered_after) > max(numbered_before)  # a number still names one request


@pytest.mark.parametrize("occupant", ["file", "live socket"])
def test_a_proxy_leaves_what_is_not_a_stale_socket_and_exits_1(daemon_socket, occupant):
    root = short_tempdir("dpj-")
    proxy = ProxyProcess(daemon_socket, root)
    listener = None
    try:
        if occupant == "file":
            Path(proxy.socket).write_text("keep me")
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(proxy.socket)
            listener.listen(1)
        ended = subprocess.run(proxy.command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ended.returncode == 1 and "cannot listen" in ended.stderr
        if occupant == "file":
            assert Path(proxy.socket).read_text() == "keep me"
        else:
            assert stat.S_ISSOCK(os.lstat(proxy.socket).st_mode)
            listener.accept()[0].close()  # the probe that found it alive
        assert [f["kind"] for f in proxy.facts()] == []
    finally:
        if listener:
            listener.close()
        proxy.close()


def test_the_socket_belongs_to_the_owner_given_who_can_use_it(daemon_socket):
    need_debian_docker()
    if os.geteuid() != 0:
        pytest.skip("giving a socket to another user needs root")
    root = short_tempdir("dpj-")
    os.chmod(root, 0o711)  # as the build's directory: its user can reach the socket by name
    proxy = ProxyProcess(daemon_socket, root, owner=NOBODY).start()
    try:
        status = os.lstat(proxy.socket)
        assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (NOBODY, 0o600)
        home = os.path.join(root, "home")  # the build's user's own, under the folder it can pass
        os.mkdir(home, 0o700)
        os.chown(home, NOBODY, -1)
        environment = {"PATH": os.environ["PATH"], "HOME": home, "DOCKER_HOST": f"unix://{proxy.socket}",
                       "DOCKER_CONFIG": os.path.join(home, ".docker")}
        as_nobody = subprocess.run([DEBIAN_DOCKER, "version", "--format", "{{.Server.Version}}"], env=environment,
                                   user=NOBODY, capture_output=True, text=True, timeout=60)
        assert as_nobody.returncode == 0 and as_nobody.stdout.strip(), as_nobody.stderr
        as_another = subprocess.run([DEBIAN_DOCKER, "version", "--format", "{{.Server.Version}}"],
                                    env={**environment, "HOME": "/", "DOCKER_CONFIG": "/nonexistent"},
                                    user=NOBODY - 1, capture_output=True, text=True, timeout=60)
        assert as_another.returncode != 0 and "permission denied" in as_another.stderr
        assert proxy.stop() == 0
    finally:
        proxy.close()
