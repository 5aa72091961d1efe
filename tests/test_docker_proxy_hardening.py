"""agent.docker_proxy against a hostile build (issue 16's review): the socket is never acted on where the
build's user can swap it; a request that cannot be recorded is refused, never forwarded; only what
names something is journaled, and within bounds; one request at a time on a connection; request heads
parsed as strictly as the daemon could read them otherwise; connections and file descriptors bounded,
with no spinning when they run out. Against a fake daemon (http.server on a unix socket), in process
and as `python -m agent.docker_proxy`."""

import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import socketserver
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.docker_proxy import DockerProxy, Journal
from tests.harness import short_tempdir
from tests.test_docker_proxy_unit import Facts, FakeDaemon, nothing_comes, proxy_threads, raw, read_all, wait_until

ROOT = Path(__file__).resolve().parents[1]


class RecordingDaemon(FakeDaemon):
    """FakeDaemon that notes each request line it reads (server.seen)."""

    def parse_request(self):
        parsed = super().parse_request()
        self.server.seen.append(self.requestline)
        return parsed


@pytest.fixture
def daemon():
    root = short_tempdir("dp-hard-")
    server = socketserver.ThreadingUnixStreamServer(os.path.join(root, "daemon.sock"), RecordingDaemon)
    server.daemon_threads = True
    server.stream_gate = threading.Event()
    server.answers = {}
    server.seen = []
    server.root = root
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    yield server
    server.stream_gate.set()
    server.shutdown()
    server.server_close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def proxy(daemon):
    seen = Facts()
    started = DockerProxy(os.path.join(daemon.root, "proxy.sock"), daemon.server_address, on_fact=seen.append)
    started.seen = seen
    started.start()
    yield started
    started.stop()
    assert not proxy_threads()


def exchange(proxy, data):
    """data sent on a new connection; all the proxy answered until it closed (a reset after the answer
    counts as a close: the proxy closed with bytes of the client it had not read)."""
    sock = raw(proxy if isinstance(proxy, str) else proxy.listen_path)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # a proxy that answers without reading (503 over the connection limit) may have closed already
    answer = bytearray()
    try:
        while part := sock.recv(65536):
            answer += part
    except ConnectionResetError:
        pass
    sock.close()
    return bytes(answer)


# -- 1. the socket: made in a private folder, renamed into the build's --------------------------------------

IN_ATTRIB, IN_MOVED_TO, IN_CREATE = 0x4, 0x80, 0x100


def directory_events(directory, action):
    """The inotify events (name, mask) of directory's entries while action() runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, os.fsencode(directory), 0xFFF) >= 0
        action()
        events, data = [], b""
        try:
            while part := os.read(fd, 65536):
                data += part
        except BlockingIOError:
            pass
        at = 0
        while at < len(data):
            _, mask, _, size = struct.unpack_from("iIII", data, at)
            events.append((data[at + 16:at + 16 + size].rstrip(b"\0").decode(), mask))
            at += 16 + size
        return events
    finally:
        os.close(fd)


def test_the_socket_is_made_elsewhere_and_renamed_into_the_builds_folder_nothing_else_done_there(daemon):
    build_dir, private = os.path.join(daemon.root, "build"), os.path.join(daemon.root, "agent")
    os.mkdir(build_dir)
    os.mkdir(private, 0o700)
    proxy = DockerProxy(os.path.join(build_dir, "docker.sock"), daemon.server_address, owner=os.getuid(),
                        private_dir=private)
    events = directory_events(build_dir, proxy.start)
    try:
        # created, chmod-ed or chown-ed there, a symbolic link swapped in could turn it onto another file
        assert events == [("docker.sock", IN_MOVED_TO)]
        status = os.lstat(proxy.listen_path)
        assert stat.S_ISSOCK(status.st_mode) and stat.S_IMODE(status.st_mode) == 0o600
        assert os.listdir(private) == []
        sock = raw(proxy.listen_path)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200")
        sock.close()
    finally:
        proxy.stop()
    assert not os.path.lexists(proxy.listen_path)


def test_a_link_or_file_swapped_in_after_the_start_is_left_alone_by_stop(daemon):
    proxy = DockerProxy(os.path.join(daemon.root, "proxy.sock"), daemon.server_address).start()
    target = os.path.join(daemon.root, "target")
    Path(target).write_text("keep")
    os.unlink(proxy.listen_path)
    os.symlink(target, proxy.listen_path)  # what the build's user may do in its folder
    proxy.stop()
    assert os.path.islink(proxy.listen_path) and Path(target).read_text() == "keep"


@pytest.mark.parametrize("problem", ["shared folder", "too long", "a directory at the socket's place"])
def test_the_proxy_does_not_start_where_it_cannot_make_its_socket_safely(daemon, problem):
    private = os.path.join(daemon.root, "agent")
    os.mkdir(private, 0o700)
    listen = os.path.join(daemon.root, "docker.sock")
    if problem == "shared folder":
        os.chmod(private, 0o777)
    elif problem == "too long":
        private = os.path.join(private, "x" * (107 - len(private)))
        os.mkdir(private, 0o700)
    else:
        os.mkdir(listen)
    proxy = DockerProxy(listen, daemon.server_address, private_dir=private)
    with pytest.raises(OSError) as raised:
        proxy.start()
    assert {"shared folder": "nobody else can write", "too long": "longer than the 107 bytes",
            "a directory at the socket's place": "is not a stale socket"}[problem] in str(raised.value)
    assert not proxy_threads() and os.listdir(private) == []


# -- 2. fail closed: a request that cannot be recorded is not forwarded -------------------------------------

def test_a_request_whose_fact_cannot_be_written_is_answered_503_and_not_forwarded(proxy, daemon):
    def full_disk(fact):
        if fact["kind"] == "request":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        proxy.seen.append(fact)

    proxy.on_fact = full_disk
    answer = exchange(proxy, b"POST /v1.41/images/a/tag?repo=unrecorded&tag=1 HTTP/1.1\r\nHost: d\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b"this build's Docker endpoint cannot record requests: No space left on device\n")
    assert daemon.seen == [] and not proxy.seen.of("request")


def start_process(daemon, *options, preexec=None):
    """`python -m agent.docker_proxy` listening on daemon.root/p.sock, its journal daemon.root/j.jsonl, its
    log daemon.root/log: (process, socket, journal, log)."""
    sock, journal, log = (os.path.join(daemon.root, name) for name in ("p.sock", "j.jsonl", "log"))
    with open(log, "ab") as errors:
        process = subprocess.Popen([sys.executable, "-m", "agent.docker_proxy", "--listen", sock, "--daemon",
                                    daemon.server_address, "--journal", journal, *options], cwd=ROOT,
                                   stderr=errors, preexec_fn=preexec)
    wait_until(lambda: process.poll() is not None or b'"listening"' in Path(journal).read_bytes()
               if os.path.exists(journal) else process.poll() is not None)
    assert process.poll() is None, Path(log).read_text()
    return process, sock, journal, log


def stop_process(process):
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def facts_of(journal):
    """The facts of a journal's lines; a line cut short (a write that failed half way) is skipped, as the
    agent skips it."""
    facts = []
    for line in Path(journal).read_bytes().split(b"\n"):
        try:
            facts.append(json.loads(line))
        except ValueError:
            pass
    return facts


def ping(sock_path, target=b"/_ping"):
    return exchange(sock_path, b"GET %s HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n" % target)


def no_file_size_past(size):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG) rather than kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_when_the_journal_cannot_be_written_requests_are_refused_and_never_reach_the_daemon(daemon):
    process, sock, journal, _ = start_process(daemon, preexec=no_file_size_past(1500))
    try:
        answers = [ping(sock, b"/v1.41/images/a/tag?repo=r&tag=%d" % i) for i in range(12)]
        statuses = [answer.split(b" ")[1] for answer in answers]
        assert b"200" in statuses and statuses[-1] == b"503"  # a full disk, an I/O error: the same
        assert answers[-1].endswith(b"cannot record requests: File too large\n")
        recorded = [f for f in facts_of(journal) if f["kind"] == "request"]
        # each request the daemon had was recorded first; no refused one reached it
        assert len(daemon.seen) == statuses.count(b"200") <= len(recorded)
    finally:
        stop_process(process)


def test_past_the_journals_limit_requests_are_refused_and_the_journal_stays_bounded(daemon):
    process, sock, journal, _ = start_process(daemon, "--journal-limit", "3000")
    try:
        answers = [ping(sock, b"/v1.41/version?n=%d" % i) for i in range(20)]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert refused and answers[-1] in refused
        assert refused[0].endswith(b"cannot record requests: the journal is full (3000 bytes)\n")
        assert len(daemon.seen) == len(answers) - len(refused)
    finally:
        stop_process(process)
    facts = facts_of(journal)  # whole lines: responses and ends of recorded requests still written
    requests = [f["request"] for f in facts if f["kind"] == "request"]
    assert sorted(requests) == sorted(f["request"] for f in facts if f["kind"] == "end") and len(requests) < 20
    assert os.path.getsize(journal) < 3000 + 1000


def test_a_journal_refuses_requests_past_its_limit_but_ends_those_it_has(tmp_path):
    journal = Journal(tmp_path / "j.jsonl", limit=200)
    journal.write({"kind": "request", "request": 1, "path": "/x" * 40, "time_nano": 1})
    with pytest.raises(OSError) as raised:
        journal.write({"kind": "request", "request": 2, "path": "/x" * 40, "time_nano": 2})
    assert raised.value.errno == errno.EFBIG and "the journal is full (200 bytes)" in str(raised.value)
    with pytest.raises(OSError):
        journal.write({"kind": "container", "request": 1, "container": "a" * 64, "time_nano": 3})
    journal.write({"kind": "end", "request": 1, "time_nano": 4})
    journal.close()
    assert [f["kind"] for f in facts_of(tmp_path / "j.jsonl")] == ["request", "end"]


# -- 3. only what attribution needs, within bounds -----------------------------------------------------------

def test_a_request_fact_keeps_only_the_named_keys_cut_and_the_request_goes_unchanged(proxy, daemon):
    long_path = "/v1.41/containers/" + "p" * 5000 + "/json"
    query = "t=" + "a" * 2000 + "&t=b&buildargs=%7B%22SECRET%22%3A%22s%22%7D&filters=x&name=web&q=1"
    answer = exchange(proxy, f"GET {long_path}?{query} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"path": f"{long_path}?{query}"}  # forwarded whole
    (fact,) = proxy.seen.of("request")
    assert fact["query"] == {"t": ["a" * 1024, "b"], "name": ["web"], "q": ["1"]}
    assert fact["path"] == ("/containers/" + "p" * 5000)[:4096]


def test_a_request_with_too_many_values_of_a_key_is_refused_400(proxy, daemon):
    tags = "&".join(f"t=r{i}" for i in range(65))
    answer = exchange(proxy, f"POST /v1.41/build?{tags} HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and answer.endswith(b"too many values for t (65, "
                                                                                  b"at most 64)\n")
    assert daemon.seen == [] and not proxy.seen.of("request")
    tags = "&".join(f"t=r{i}" for i in range(64))
    assert exchange(proxy, f"GET /v1.41/x?{tags} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode()) \
        .startswith(b"HTTP/1.1 200")


# -- 4. one request at a time on a connection ----------------------------------------------------------------

def test_the_next_request_is_read_only_once_the_previous_answer_ended(proxy, daemon):
    sock = raw(proxy.listen_path)
    sock.sendall(b"GET /v1.41/stream HTTP/1.1\r\nHost: d\r\n\r\n"
                 b"POST /v1.41/images/a/tag?repo=b&tag=1 HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    received = nothing_comes(sock)
    while not received.endswith(b"first\r\n"):
        received += sock.recv(65536)
    time.sleep(0.3)
    # the second request waits in the socket: not recorded, not forwarded, while the first is in flight
    assert [f["path"] for f in proxy.seen.of("request")] == ["/stream"]
    daemon.stream_gate.set()
    received += read_all(sock)
    sock.close()
    assert received.count(b"HTTP/1.1 200") == 2
    wait_until(lambda: len(proxy.seen.of("end")) == 2)
    kinds = [(f["kind"], f.get("request")) for f in proxy.seen if f["kind"] in ("request", "end")]
    first, second = kinds[0][1], kinds[2][1]
    assert kinds == [("request", first), ("end", first), ("request", second), ("end", second)]


def test_an_upgrade_the_daemon_refused_leaves_the_connection_reading_requests(proxy, daemon):
    answer = exchange(proxy, b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
                             b"POST /v1.41/images/a/tag?repo=hidden&tag=1 HTTP/1.1\r\nHost: d\r\nConnection: close"
                             b"\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 2
    assert [(f["path"], f["query"]) for f in proxy.seen.of("request")] == [
        ("/version", {}), ("/images/a/tag", {"repo": ["hidden"], "tag": ["1"]})]  # the second is no raw byte


def test_stop_wakes_a_connection_waiting_for_its_answer_with_a_request_behind(proxy, daemon):
    sock = raw(proxy.listen_path)
    sock.sendall(b"GET /v1.41/stream HTTP/1.1\r\nHost: d\r\n\r\nGET /v1.41/version HTTP/1.1\r\nHost: d\r\n\r\n")
    wait_until(lambda: proxy.seen.of("response"))
    proxy.stop()  # the fixture checks that no thread is left
    assert not proxy_threads()
    sock.close()


def test_a_client_gone_while_waiting_for_its_answer_ends_the_connection(proxy, daemon):
    sock = raw(proxy.listen_path)
    sock.sendall(b"GET /v1.41/stream HTTP/1.1\r\nHost: d\r\n\r\n")
    received = b""
    while not received.endswith(b"first\r\n"):
        received += sock.recv(65536)
    sock.close()
    daemon.stream_gate.set()  # the rest of the answer finds the client gone
    wait_until(lambda: not proxy._connections)
    assert [f["kind"] for f in proxy.seen if f["kind"] != "listening"] == ["request", "response", "end"]


# -- 5. strict request heads, lenient response heads ---------------------------------------------------------

SMUGGLED = b"POST /v1.41/images/a/tag?repo=smuggled&tag=1 HTTP/1.1\r\nHost: d\r\n\r\n"


@pytest.mark.parametrize("request_bytes", [
    b"GET /_ping HTTP/1.1\r\nHost: d\r\nX: a\n\nPOST /v1.41/images/a/tag?repo=smuggled&tag=1 HTTP/1.1\nHost: d\r\n\r\n",
    b"GET /_ping HTTP/1.1\nHost: d\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET /_ping HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
    b"GET /_p\ting HTTP/1.1\r\nHost: d\r\n\r\n",
    "POST /_ping HTTP/1.1\r\nContent-Length: ²\r\n\r\n".encode(),
    b"POST /_ping HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
], ids=["bare-lf-smuggling", "bare-lf", "bare-cr", "nul", "del", "tab-in-request-line", "superscript-length",
        "signed-length"])
def test_a_request_head_the_daemon_could_read_otherwise_is_refused_400(proxy, daemon, request_bytes):
    answer = exchange(proxy, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert daemon.seen == [] and not proxy.seen.of("request")


@pytest.mark.parametrize("body", [
    "²\r\nabc\r\n0\r\n\r\n".encode(), b"0x3\r\nabc\r\n0\r\n\r\n", b"3\nabc\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nX: a\n\r\n" + SMUGGLED,
], ids=["superscript-size", "0x-size", "bare-lf-size-line", "bare-lf-trailer-smuggling"])
def test_a_chunked_body_the_daemon_could_read_otherwise_cuts_the_connection(proxy, daemon, body):
    answer = exchange(proxy, b"POST /v1.41/echo HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert b"HTTP/1.1 200" not in answer
    time.sleep(0.2)
    assert not any("smuggled" in line for line in daemon.seen)
    assert len(proxy.seen.of("request")) == 1  # the head was fine and forwarded; its body was not
    wait_until(lambda: proxy.seen.of("end"))


def test_a_tab_in_a_header_value_is_fine(proxy, daemon):
    assert exchange(proxy, b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nX: a\tb\r\nConnection: close\r\n\r\n") \
        .startswith(b"HTTP/1.1 200")


def test_response_heads_stay_lenient(proxy, daemon):
    odd = b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\rc\x7f\r\nContent-Length: 2\r\n\r\nok"
    daemon.answers["/v1.41/odd"] = odd
    assert exchange(proxy, b"POST /v1.41/odd HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n") == odd
    superscript = "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\nok".encode()  # not ours to judge: passed on
    daemon.answers["/v1.41/superscript"] = superscript
    assert exchange(proxy, b"POST /v1.41/superscript HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n") \
        == superscript


# -- 6. connections and file descriptors ---------------------------------------------------------------------

def test_connections_over_the_limit_are_answered_503_at_once(daemon):
    process, sock, _, log = start_process(daemon, "--max-connections", "3")
    held = []
    try:
        for _ in range(3):
            held.append(raw(sock))
            held[-1].sendall(b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\n\r\n")
            assert held[-1].recv(12) == b"HTTP/1.1 200"
        for _ in range(5):
            answer = ping(sock)
            assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"has 3 connections open already\n")
        held.pop().close()
        wait_until(lambda: ping(sock).startswith(b"HTTP/1.1 200"))
    finally:
        for s in held:
            s.close()
        stop_process(process)
    assert Path(log).read_text().count("turned") == 1  # once a minute at most


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_files_limit(pid):
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files")


def test_the_soft_limit_of_open_files_is_raised_to_the_hard_one(daemon):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 256:
        pytest.skip("needs a finite hard limit of open files of 256 or more")
    process, *_ = start_process(daemon, preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)))
    try:
        assert open_files_limit(process.pid) == hard
    finally:
        stop_process(process)


def test_out_of_file_descriptors_the_proxy_waits_rather_than_spins_and_recovers(daemon):
    process, sock, _, log = start_process(daemon, "--max-connections", "1000",
                                          preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
    held = []
    try:
        for _ in range(40):  # each connection the proxy serves takes it 6 descriptors: it runs out
            held.append(raw(sock))
        time.sleep(1)
        before = cpu_seconds(process.pid)
        time.sleep(2)
        assert cpu_seconds(process.pid) - before < 0.5
        text = Path(log).read_text()
        assert text.count("cannot take connections") == 1, text
        for s in held:
            s.close()
        held = []
        wait_until(lambda: ping(sock).startswith(b"HTTP/1.1 200"))
        assert "accepting connections again" in Path(log).read_text()
    finally:
        for s in held:
            s.close()
        stop_process(process)
