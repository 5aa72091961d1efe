"""agent.docker_proxy against a tiny fake daemon (http.server on a unix socket): framing of requests and
responses, upgrades, broken clients, stop(), and the facts it reports (the JSON lines of build, push and
pull answers read as they pass, unchanged). With os.splice and with the copy fallback."""

import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from agent import docker_proxy
from agent.docker_proxy import DockerProxy, LineSplitter, stream_facts
from tests.harness import short_tempdir

MiB = 1024 * 1024
IMAGE_ID = "sha256:" + "b" * 64
DIGEST = "sha256:" + "d" * 64


class FakeDaemon(BaseHTTPRequestHandler):
    """Answers like the daemon; a path in server.answers gets those bytes as they are (head and body),
    then the connection closes."""

    protocol_version = "HTTP/1.1"
    stream_gate: threading.Event

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:  # the client (a test) left in the middle
                    return bytes(data)
                size = int(line.split(b";")[0], 16)
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.read(2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, payload, content_type="application/json"):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()

    def do_GET(self):
        if self.path.endswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nfirst\r\n")
            self.wfile.flush()
            self.server.stream_gate.wait(30)  # the client must have the first chunk before the second exists
            self.wfile.write(b"6\r\nsecond\r\n0\r\n\r\n")
        elif self.path.endswith("/until-close"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"all of it")
            self.close_connection = True
        else:
            self.answer(200, {"path": self.path})

    def do_POST(self):
        if "/upgrade" in self.path:
            self.send_response(101, "UPGRADED")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
            self.end_headers()
            self.wfile.flush()
            while data := self.rfile.read1(65536):
                self.wfile.write(data.upper())
                self.wfile.flush()
            self.close_connection = True
            return
        body = self.body()
        if self.raw_answer():
            return
        if self.path.split("?")[0].endswith("/containers/create"):
            self.answer(201, {"Id": "c0ffee" * 10, "Warnings": []})
        elif self.path.split("?")[0].endswith("/exec"):
            self.answer(201, {"Id": "e" * 64})
        else:
            self.answer(200, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    def do_DELETE(self):
        if not self.raw_answer():
            self.answer(404, {"message": "no such image"})

    def raw_answer(self):
        answer = self.server.answers.get(self.path.split("?")[0])
        if answer is None:
            return False
        self.wfile.write(answer)
        self.close_connection = True
        return True


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)


def raw(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def read_all(sock):
    data = bytearray()
    while part := sock.recv(65536):
        data += part
    return bytes(data)


def proxy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("docker-proxy")]


def wait_until(condition):
    deadline = time.monotonic() + 30  # a bound against hanging, not a measure
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


class Facts(list):
    """The facts on_fact received, in order; .requests() folds them per request."""

    def requests(self):
        """One dict per request, in the order they came: the fields of all its facts, its kinds in order."""
        folded = {}
        for fact in [fact for fact in self if "request" in fact]:
            request = folded.setdefault(fact["request"], {"kinds": []})
            request["kinds"].append(fact["kind"])
            request.update({k: v for k, v in fact.items() if k not in ("kind", "time_nano")})
        return list(folded.values())

    def of(self, kind):
        return [fact for fact in list(self) if fact["kind"] == kind]


def chunked(data, sizes):
    """data in chunks of the given sizes (the last takes the rest), then the zero chunk."""
    out, at = bytearray(), 0
    for size in sizes:
        if at >= len(data):
            break
        piece = data[at:at + size]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
        at += size
    if at < len(data):
        out += b"%x\r\n%s\r\n" % (len(data) - at, data[at:])
    return bytes(out + b"0\r\n\r\n")


def answer_bytes(status, body, framing, chunk_sizes=()):
    """A whole HTTP answer as a daemon would write it, with the body framed as asked."""
    head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % status
    if framing == "chunked":
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, chunk_sizes)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return head + b"Connection: close\r\n\r\n" + body


@pytest.fixture(params=["splice", "copy"])
def setup(request, monkeypatch):
    monkeypatch.setattr(docker_proxy, "SPLICE", request.param == "splice")
    root = short_tempdir("dp-unit-")
    daemon_path, listen_path = os.path.join(root, "daemon.sock"), os.path.join(root, "proxy.sock")
    server = socketserver.ThreadingUnixStreamServer(daemon_path, FakeDaemon)
    server.daemon_threads = True
    server.stream_gate = threading.Event()
    server.answers = {}
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    seen = Facts()
    proxy = DockerProxy(listen_path, daemon_path, on_fact=seen.append).start()
    yield proxy, server, seen
    proxy.stop()
    server.stream_gate.set()
    server.shutdown()
    server.server_close()
    shutil.rmtree(root, ignore_errors=True)
    assert not proxy_threads()


def test_requests_one_after_another_on_a_connection_arrive_whole_and_are_reported(setup):
    proxy, _, seen = setup
    big = os.urandom(3 * MiB)
    connection = UnixHTTPConnection(proxy.listen_path)
    connection.request("GET", "/v1.41/info?all=1&filters=%7B%7D&t=a&t=b")
    assert json.loads(connection.getresponse().read()) == {"path": "/v1.41/info?all=1&filters=%7B%7D&t=a&t=b"}
    connection.request("POST", "/v1.41/echo", body=big)
    assert json.loads(connection.getresponse().read())["sha256"] == hashlib.sha256(big).hexdigest()
    connection.request("POST", "/echo", body=(big[i:i + 100_000] for i in range(0, len(big), 100_000)),
                       encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    assert json.loads(connection.getresponse().read()) == {"length": len(big),
                                                           "sha256": hashlib.sha256(big).hexdigest()}
    connection.request("HEAD", "/_ping")  # Content-Length 2 and no body: the next answer must still fit
    assert connection.getresponse().read() == b""
    connection.request("POST", "/v1.41/containers/create?name=web", body=b'{"Image": "busybox"}')
    assert connection.getresponse().read() == b'{"Id": "' + b"c0ffee" * 10 + b'", "Warnings": []}'
    connection.request("POST", "/v1.41/containers/web/exec", body=b'{"Cmd": ["true"]}')
    assert connection.getresponse().status == 201
    connection.close()
    wait_until(lambda: len(seen.of("end")) == 6)
    requests = seen.requests()
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/info", 200), ("POST", "/echo", 200), ("POST", "/echo", 200), ("HEAD", "/_ping", 200),
        ("POST", "/containers/create", 201), ("POST", "/containers/web/exec", 201)]
    assert all(r["kinds"] == ["request", "response", "end"] for r in requests)
    assert len({r["request"] for r in requests}) == 6
    assert requests[0]["query"] == {"t": ["a", "b"]}  # only what names something: all and filters are not
    assert requests[4]["query"] == {"name": ["web"]} and requests[4]["container"] == "c0ffee" * 10
    assert requests[5]["exec"] == "e" * 64
    assert not any({"container", "exec"} & set(r) for r in requests[:4])
    assert all(isinstance(fact["time_nano"], int) for fact in seen)


def test_chunk_extensions_and_trailers_pass_through(setup):
    proxy, _, seen = setup
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/echo HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3;name=x\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
                 b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    answer = read_all(sock)
    sock.close()
    assert json.dumps({"length": 5, "sha256": hashlib.sha256(b"abcde").hexdigest()}).encode() in answer
    assert b'{"path": "/v1.41/version"}' in answer
    assert [(r["path"], r["status"]) for r in seen.requests()] == [("/echo", 200), ("/version", 200)]


def test_a_streaming_response_reaches_the_client_as_it_comes(setup):
    proxy, server, _ = setup
    connection = UnixHTTPConnection(proxy.listen_path)
    connection.request("GET", "/v1.41/stream")
    response = connection.getresponse()
    assert response.read1() == b"first"  # the daemon holds the rest back until this arrived
    server.stream_gate.set()
    assert response.read() == b"second"
    connection.close()


def test_a_body_that_ends_when_the_daemon_closes_is_passed_on_whole(setup):
    proxy, _, seen = setup
    sock = raw(proxy.listen_path)
    sock.sendall(b"GET /v1.41/until-close HTTP/1.1\r\nHost: d\r\n\r\n")
    assert read_all(sock).endswith(b"\r\n\r\nall of it")
    sock.close()
    wait_until(lambda: seen.of("end"))
    assert seen.requests()[0]["status"] == 200 and seen.requests()[0]["kinds"] == ["request", "response", "end"]


def test_an_upgraded_connection_carries_raw_bytes_both_ways_with_half_close(setup):
    proxy, _, seen = setup
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/exec/abc/upgrade HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 UPGRADED")
    sock.sendall(b"hello ")
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not a request any more: raw bytes
    sock.shutdown(socket.SHUT_WR)
    assert read_all(sock) == b"HELLO GET / HTTP/1.1\r\n\r\n"
    sock.close()
    wait_until(lambda: seen.of("end"))
    assert [(r["path"], r["status"], r["kinds"]) for r in seen.requests()] == [
        ("/exec/abc/upgrade", 101, ["request", "response", "end"])]


@pytest.mark.parametrize("head, status", [
    (b"GARBAGE\r\n\r\n", b"400"), (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
    (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", None)])
def test_a_malformed_request_closes_that_connection_only(setup, head, status):
    proxy, _, seen = setup
    sock = raw(proxy.listen_path)
    sock.sendall(head)
    answer = read_all(sock)
    sock.close()
    if status:  # a head: answered by the proxy, never forwarded
        assert answer.startswith(b"HTTP/1.1 " + status) and not seen.of("request")
    else:  # a body: the head went to the daemon; the connection is cut
        assert b"HTTP/1.1" not in answer
    connection = UnixHTTPConnection(proxy.listen_path)
    connection.request("GET", "/v1.41/version")
    assert connection.getresponse().status == 200
    connection.close()


def test_a_client_gone_in_the_middle_of_a_body_closes_both_sides(setup):
    proxy, _, _ = setup
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/echo HTTP/1.1\r\nHost: d\r\nContent-Length: %d\r\n\r\n" % (100 * MiB))
    sock.sendall(os.urandom(MiB))
    sock.close()
    wait_until(lambda: not proxy._connections)
    connection = UnixHTTPConnection(proxy.listen_path)
    connection.request("GET", "/v1.41/version")
    assert connection.getresponse().status == 200
    connection.close()


def test_without_a_daemon_the_client_gets_502_and_the_connection_closes():
    root = short_tempdir("dp-unit-")
    proxy = DockerProxy(os.path.join(root, "proxy.sock"), os.path.join(root, "missing.sock")).start()
    try:
        sock = raw(proxy.listen_path)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
        answer = read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert answer.endswith(b"missing.sock cannot be reached: No such file or directory\n")
    finally:
        proxy.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not proxy_threads()


def test_stop_closes_open_connections_removes_the_socket_and_leaves_no_thread(setup):
    proxy, _, seen = setup
    assert stat.S_IMODE(os.stat(proxy.listen_path).st_mode) == 0o600
    idle = UnixHTTPConnection(proxy.listen_path)
    idle.request("GET", "/v1.41/version")
    idle.getresponse().read()
    upgraded = raw(proxy.listen_path)
    upgraded.sendall(b"POST /upgrade HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    assert upgraded.recv(12) == b"HTTP/1.1 101"
    half_head = raw(proxy.listen_path)
    half_head.sendall(b"GET /v1.41/version HTTP/1.1\r\nHo")
    wait_until(lambda: len(proxy._connections) == 3)
    proxy.stop()
    assert not proxy_threads()
    assert not os.path.exists(proxy.listen_path)
    assert (seen[0]["kind"], seen[0]["pid"], seen[-1]["kind"]) == ("listening", os.getpid(), "stopped")
    assert [(r["path"], r["kinds"]) for r in seen.requests()] == [  # the head cut short was no request
        ("/version", ["request", "response", "end"]), ("/upgrade", ["request", "response", "end"])]
    for sock in (idle.sock, upgraded, half_head):
        try:
            assert b"HTTP/1.1" not in read_all(sock)
        except ConnectionResetError:  # closed with bytes it had not read yet: as closed as an end of stream
            pass
        sock.close()


# -- the facts of build, push and pull answers ------------------------------------------------------------

def split_at_random(data, seed, most=5000):
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, most)
        pieces.append(data[at:at + size])
        at += size
    return pieces


def test_the_line_splitter_gives_each_line_whole_wherever_the_pieces_split_it():
    stream = b'{"stream":"Step 1/2 : RUN true"}\r\n{"stream":"\\n"}\r\n\n{"aux":{"ID":"x"}}\r\nlast'
    for cut in range(1, len(stream)):
        lines = []
        splitter = LineSplitter(lines.append)
        splitter.feed(stream[:cut])
        splitter.feed(stream[cut:])
        splitter.close()
        assert lines == stream.split(b"\n"), cut
    lines = []
    splitter = LineSplitter(lines.append)
    for byte in range(len(stream)):
        splitter.feed(stream[byte:byte + 1])
    splitter.close()
    assert lines == stream.split(b"\n")


def test_a_line_over_the_limit_is_dropped_whole_and_the_next_one_read():
    lines = []
    splitter = LineSplitter(lines.append, limit=10)
    for piece in [b"0123456789\n", b"0123456789", b"0\nshort\n", b"01234", b"567890123", b"\n", b"end\n"]:
        splitter.feed(piece)
    assert lines == [b"0123456789", b"short", b"end"]  # a line of exactly the limit is kept
    lines.clear()
    splitter = LineSplitter(lines.append)  # 1 MiB
    stream = b'{"a":1}\n' + b"x" * (2 * MiB) + b'\n{"b":2}\n'
    for piece in split_at_random(stream, 1, most=64 * 1024):
        splitter.feed(piece)
    assert lines == [b'{"a":1}', b'{"b":2}'] and len(splitter.buffer) == 0


def test_stream_facts_reads_what_the_daemon_writes_and_nothing_else():
    assert stream_facts(b'{"stream":" ---\\u003e Running in 0123456789ab\\n"}\r') == [
        ("container", {"container": "0123456789ab"})]
    assert stream_facts(b'{"aux":{"ID":"%s"}}\r' % IMAGE_ID.encode()) == [("built", {"image_id": IMAGE_ID})]
    assert stream_facts(b'{"id":"moby.image.id","aux":{"ID":"%s"}}' % IMAGE_ID.encode()) == [
        ("built", {"image_id": IMAGE_ID})]  # BuildKit's
    assert stream_facts(b'{"progressDetail":{},"aux":{"Tag":"1","Digest":"%s","Size":528}}' % DIGEST.encode()) == [
        ("pushed", {"tag": "1", "digest": DIGEST, "size": 528})]
    assert stream_facts(b'{"status":"Digest: %s"}\r' % DIGEST.encode()) == [("pulled", {"digest": DIGEST})]
    # Podman's push says its digest in a status line only (Docker's too, before its aux)
    assert stream_facts(b'{"status":"v1.2: digest: %s size: 343"}' % DIGEST.encode()) == [
        ("pushed", {"tag": "v1.2", "digest": DIGEST, "size": 343})]
    for nothing in [b'{"id":"moby.buildkit.trace","aux":"CnsKR3NoYTI1Njo0"}', b'{"stream":"Running in 0123"}',
                    b'{"stream":"Step 1/2 : RUN echo \\" ---\\u003e Running in\\""}', b'{"aux":{"ID":"sha256:12"}}',
                    b"not json", b"\xff\xfe", b"[1, 2]", b"[" * 100_000, b'{"status":"Downloading"}', b"",
                    b'{"status":"1: digest: sha256:12 size: 3"}',
                    b'{"status":"a b: digest: %s size: 3"}' % DIGEST.encode()]:
        assert stream_facts(nothing) == [], nothing


BUILD_LINES = [
    b'{"stream":"Step 1/2 : RUN true"}\r\n',
    b'{"stream":"\\n"}\r\n',
    b'{"stream":" ---\\u003e Running in 0123456789ab\\n"}\r\n',
    b'{"aux":{"ID":"sha256:' + b"f" * 64 + b'"},"stream":"' + b"x" * (2 * MiB) + b'"}\r\n',  # too long to read
    b'{"aux":{"ID":"' + IMAGE_ID.encode() + b'"}}\r\n',
    b'{"stream":"Successfully built bbbbbbbbbbbb\\n"}\r\n',
]


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_a_build_answer_passes_unchanged_and_its_facts_are_reported(setup, framing):
    proxy, server, seen = setup
    body = b"".join(BUILD_LINES)
    answer = answer_bytes(200, body, framing, [len(piece) for piece in split_at_random(body, 2)])
    if framing == "chunked":  # with a chunk extension and a trailer
        answer = answer[:-len(b"0\r\n\r\n")] + b"0;last=1\r\nX-Trailer: 1\r\n\r\n"
    server.answers["/v1.41/build"] = answer
    context = os.urandom(MiB)
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/build?t=x%%2Fy:1&rm=1 HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(context), context))
    assert read_all(sock) == answer
    sock.close()
    wait_until(lambda: seen.of("end"))
    (build,) = seen.requests()
    assert build["kinds"] == ["request", "response", "container", "built", "end"]
    assert (build["path"], build["query"], build["status"]) == ("/build", {"t": ["x/y:1"]}, 200)
    assert build["container"] == "0123456789ab" and build["image_id"] == IMAGE_ID


def test_a_push_and_a_pull_report_their_digests(setup):
    proxy, server, seen = setup
    push = [b'{"status":"The push refers to repository [127.0.0.1:5000/a/b]"}\r\n',
            b'{"status":"1: digest: %s size: 528"}\r\n' % DIGEST.encode(),
            b'{"progressDetail":{},"aux":{"Tag":"1","Digest":"%s","Size":528}}\r\n' % DIGEST.encode()]
    pull = [b'{"status":"Pulling from a/b","id":"1"}\r\n', b'{"status":"Digest: %s"}\r\n' % DIGEST.encode(),
            b'{"status":"Status: Downloaded newer image for 127.0.0.1:5000/a/b:1"}\r\n']
    server.answers["/v1.41/images/127.0.0.1:5000/a/b/push"] = answer_bytes(200, b"".join(push), "chunked", [50, 3])
    server.answers["/v1.41/images/create"] = answer_bytes(200, b"".join(pull), "chunked", [7] * 30)
    for target in ["/v1.41/images/127.0.0.1:5000/a/b/push?tag=1",
                   "/v1.41/images/create?fromImage=127.0.0.1:5000/a/b&tag=1"]:
        connection = UnixHTTPConnection(proxy.listen_path)
        connection.request("POST", target, body=b"")
        assert connection.getresponse().read() == b"".join(push if "push" in target else pull)
        connection.close()
    wait_until(lambda: len(seen.of("end")) == 2)
    pushed, pulled = seen.requests()
    assert pushed["path"] == "/images/127.0.0.1:5000/a/b/push" and pushed["kinds"][2:] == ["pushed", "end"]
    assert (pushed["tag"], pushed["digest"], pushed["size"]) == ("1", DIGEST, 528)
    assert pulled["path"] == "/images/create" and pulled["kinds"][2:] == ["pulled", "end"]
    assert pulled["digest"] == DIGEST


def test_an_image_deletes_answer_reports_what_was_untagged_and_deleted(setup):
    proxy, server, seen = setup
    deleted = [{"Untagged": "x/y:1"}, {"Untagged": "x/y@" + DIGEST}]
    deleted += [{"Deleted": f"sha256:{i:064x}"} for i in range(40)]
    body = json.dumps(deleted).encode() + b"\n"  # over 2 KiB: Go's server sends it chunked
    server.answers["/v1.41/images/x/y:1"] = answer_bytes(200, body, "chunked", [2048])
    huge = json.dumps([{"Deleted": f"sha256:{i:064x}"} for i in range(1000)]).encode()  # over 64 KiB
    server.answers["/v1.41/images/huge"] = answer_bytes(200, huge, "length")
    for path, expected in [("/v1.41/images/x/y:1", body), ("/v1.41/images/huge", huge)]:
        connection = UnixHTTPConnection(proxy.listen_path)
        connection.request("DELETE", path)
        assert connection.getresponse().read() == expected
        connection.close()
    wait_until(lambda: len(seen.of("end")) == 2)
    small, large = seen.requests()
    assert small["path"] == "/images/x/y:1" and small["untagged"] == ["x/y:1", "x/y@" + DIGEST]
    assert small["deleted"] == [f"sha256:{i:064x}" for i in range(40)]
    assert large["path"] == "/images/huge" and large["status"] == 200 and "deleted" not in large


def hold_facts(proxy, seen, kind):
    """Facts of `kind` held in on_fact (as a slow journal would) until the returned event is set."""
    release = threading.Event()

    def on_fact(fact):
        if fact["kind"] == kind:
            assert release.wait(30)
        seen.append(fact)

    proxy.on_fact = on_fact
    return release


def nothing_comes(sock, seconds=0.5):
    """Whatever the socket gives within `seconds` (b"" if nothing)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return b""
    finally:
        sock.settimeout(30)


def test_the_daemon_gets_a_request_only_after_its_fact_is_reported(setup):
    proxy, _, seen = setup
    release = hold_facts(proxy, seen, "request")
    sock = raw(proxy.listen_path)
    sock.sendall(b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n")
    assert nothing_comes(sock) == b""  # answers are not held: the daemon has not had the request
    release.set()
    assert read_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()


def test_the_client_gets_a_created_containers_id_only_after_its_fact_is_reported(setup):
    proxy, _, seen = setup
    release = hold_facts(proxy, seen, "response")
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\nConnection: close"
                 b"\r\n\r\n{}")
    assert nothing_comes(sock) == b""
    release.set()
    assert read_all(sock).endswith(b'{"Id": "' + b"c0ffee" * 10 + b'", "Warnings": []}')
    sock.close()
    assert seen.of("response")[0]["container"] == "c0ffee" * 10


def test_the_client_gets_a_built_images_line_only_after_its_fact_is_reported(setup):
    proxy, server, seen = setup
    release = hold_facts(proxy, seen, "built")
    body = BUILD_LINES[0] + BUILD_LINES[4]
    server.answers["/v1.41/build"] = answer_bytes(200, body, "chunked", [len(body)])
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/build HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n")
    received = bytearray()
    while b'"aux"' not in received and (part := nothing_comes(sock)):
        received += part
    assert b'"aux"' not in received
    release.set()
    received += read_all(sock)
    sock.close()
    assert received == server.answers["/v1.41/build"]


def test_a_quiet_builds_image_id_is_reported_before_the_client_has_it(setup):
    proxy, server, seen = setup
    release = hold_facts(proxy, seen, "built")
    body = b'{"stream":"' + IMAGE_ID.encode() + b'\\n"}\r\n'
    server.answers["/v1.41/build"] = answer_bytes(200, body, "chunked", [len(body)])
    sock = raw(proxy.listen_path)
    sock.sendall(b"POST /v1.41/build?q=1 HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n")
    received = bytearray()
    while b"sha256" not in received and (part := nothing_comes(sock)):
        received += part
    assert b"sha256" not in received
    release.set()
    received += read_all(sock)
    sock.close()
    assert received == server.answers["/v1.41/build"]
    assert [(f["kind"], f.get("image_id")) for f in seen.of("built")] == [("built", IMAGE_ID)]


@pytest.mark.parametrize("query, lines", [
    ("q=1", [b'{"stream":"' + IMAGE_ID.encode() + b'\\n"}\r\n', b'{"errorDetail":{"message":"no"},"error":"no"}\r\n']),
    ("q=false", [b'{"stream":"' + IMAGE_ID.encode() + b'\\n"}\r\n']),
    ("", [b'{"stream":"' + IMAGE_ID.encode() + b'\\n"}\r\n']),
], ids=["quiet-failed", "q-false", "not-quiet"])
def test_a_line_that_only_looks_like_a_quiet_builds_id_is_no_image(setup, query, lines):
    proxy, server, seen = setup
    body = b"".join(lines)
    server.answers["/v1.41/build"] = answer_bytes(200, body, "chunked", [len(lines[0]), 5])
    connection = UnixHTTPConnection(proxy.listen_path)
    connection.request("POST", f"/v1.41/build?{query}", body=b"")
    assert connection.getresponse().read() == body
    connection.close()
    wait_until(lambda: seen.of("end"))
    assert seen.requests()[0]["kinds"] == ["request", "response", "end"]


def test_the_podman_clis_libpod_requests_are_journaled_with_what_they_name_and_their_answers_ids(setup):
    """What Debian's podman 4.3 sends (CONTAINER_HOST: its libpod API, /v4.3.1/libpod/...) and what Podman answers:
    a pull's `reference`, a push's `destination` (never its credentials' query keys), a create's Id, a removal's
    libpod answer; a push's digest where Podman says it (`manifestdigest`, 4.6 on: 4.3's push says none)."""
    proxy, server, seen = setup
    pushing = [b'{"stream":"Getting image source signatures\\n"}\n', b'{"stream":"Writing manifest to image '
               b'destination\\n"}\n']
    server.answers["/v4.3.1/libpod/images/localhost:5000/app:1/push"] = answer_bytes(
        200, b"".join(pushing + [b'{"manifestdigest":"%s"}\n' % DIGEST.encode()]), "chunked", [40])
    server.answers["/v4.3.1/libpod/images/localhost:5000/app:2/push"] = answer_bytes(
        200, b"".join(pushing), "chunked", [40])  # Podman 4.3
    removed = {"Deleted": ["f" * 64], "Untagged": ["localhost:5000/app:1", "localhost:5000/app:2"], "ExitCode": 0,
               "Errors": []}
    server.answers["/v4.3.1/libpod/images/remove"] = answer_bytes(200, json.dumps(removed).encode(), "length")
    credentials = "authfile=%2Fbuild%2Fconfig.json&username=ci&password=hunter2-secret&policy=always"
    for method, target in [
            ("POST", f"/v4.3.1/libpod/images/pull?reference=localhost%3A5000%2Fbase%3A1&{credentials}"),
            ("POST", f"/v4.3.1/libpod/images/localhost:5000/app:1/push?destination=localhost%3A5000%2Fother%3A9&"
                     f"{credentials}&quiet=false"),
            ("POST", "/v4.3.1/libpod/images/localhost:5000/app:2/push?destination=localhost%3A5000%2Fapp%3A2"),
            ("POST", "/v4.3.1/libpod/containers/create"),
            ("DELETE", "/v4.3.1/libpod/images/remove?images=localhost%3A5000%2Fapp%3A1&images=x&force=false")]:
        connection = UnixHTTPConnection(proxy.listen_path)
        connection.request(method, target, body=b'{"name": "run-1"}' if method == "POST" else None)
        response = connection.getresponse()
        assert response.status in (200, 201) and response.read()  # the whole answer, as the CLI reads it
        connection.close()
    wait_until(lambda: len(seen.of("end")) == 5)
    pull, push, push_43, create, remove = seen.requests()
    assert (pull["path"], pull["query"]) == ("/libpod/images/pull", {"reference": ["localhost:5000/base:1"]})
    assert (push["path"], push["query"]) == ("/libpod/images/localhost:5000/app:1/push",
                                             {"destination": ["localhost:5000/other:9"]})
    assert push["kinds"] == ["request", "response", "pushed", "end"]
    assert (push["tag"], push["digest"], push["size"]) == ("9", DIGEST, None)  # the destination's tag
    assert push_43["kinds"] == ["request", "response", "end"]
    assert create["path"] == "/libpod/containers/create" and create["container"] == "c0ffee" * 10
    assert remove["path"] == "/libpod/images/remove" and remove["query"] == {"force": ["false"]}
    assert remove["deleted"] == ["f" * 64] and remove["untagged"] == removed["Untagged"]
    assert "hunter2" not in json.dumps(list(seen)) and "config.json" not in json.dumps(list(seen))


def test_a_version_prefix_is_stripped_as_the_daemons_route_it():
    """dockerd routes /v{[0-9.]+}/..., Podman /v{[0-9][0-9.]*}/...: a request the daemon takes for a create is
    journaled as one, whatever its version looks like."""
    for target, path in [("/v1.41/containers/create", "/containers/create"), ("/v4.3.1/libpod/build", "/libpod/build"),
                         ("/v1.41.0.1/containers/create", "/containers/create"), ("/v1/_ping", "/_ping"),
                         ("/v1.41", "/"), ("/version", "/version"), ("/vx/containers/create", "/vx/containers/create")]:
        request = docker_proxy._Request(f"POST {target} HTTP/1.1\r\nHost: d\r\n\r\n".encode())
        assert request.path == path, target
