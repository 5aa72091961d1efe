"""agent.docker_proxy against a tiny fake daemon (http.server on a unix socket): framing of requests and
responses, upgrades, broken clients, stop(). With os.splice and with the copy fallback."""

import hashlib
import http.client
import json
import os
import shutil
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from agent import docker_proxy
from agent.docker_proxy import DockerProxy
from tests.harness import short_tempdir

MiB = 1024 * 1024


class FakeDaemon(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stream_gate: threading.Event

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
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
        if self.path.split("?")[0].endswith("/containers/create"):
            self.answer(201, {"Id": "c0ffee" * 10, "Warnings": []})
        else:
            self.answer(200, {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})


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


@pytest.fixture(params=["splice", "copy"])
def setup(request, monkeypatch):
    monkeypatch.setattr(docker_proxy, "SPLICE", request.param == "splice")
    root = short_tempdir("dp-unit-")
    daemon_path, listen_path = os.path.join(root, "daemon.sock"), os.path.join(root, "proxy.sock")
    server = socketserver.ThreadingUnixStreamServer(daemon_path, FakeDaemon)
    server.daemon_threads = True
    server.stream_gate = threading.Event()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    seen = []
    proxy = DockerProxy(listen_path, daemon_path, on_request=seen.append).start()
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
    assert connection.getresponse().status == 201
    connection.close()
    assert [(i["method"], i["path"], i["status"]) for i in seen] == [
        ("GET", "/info", 200), ("POST", "/echo", 200), ("POST", "/echo", 200), ("HEAD", "/_ping", 200),
        ("POST", "/containers/create", 201)]
    assert seen[0]["query"] == {"all": ["1"], "filters": ["{}"], "t": ["a", "b"]}
    assert seen[4]["query"] == {"name": ["web"]} and seen[4]["body"] == {"Id": "c0ffee" * 10, "Warnings": []}
    assert all("body" not in info for info in seen[:4])


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
    assert [(i["path"], i["status"]) for i in seen] == [("/echo", 200), ("/version", 200)]


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
    assert seen[0]["status"] == 200


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
    assert [(i["path"], i["status"]) for i in seen] == [("/exec/abc/upgrade", 101)]


@pytest.mark.parametrize("head", [b"GARBAGE\r\n\r\n", b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
                                  b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                                  b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_a_malformed_request_closes_that_connection_only(setup, head):
    proxy, _, seen = setup
    sock = raw(proxy.listen_path)
    sock.sendall(head)
    answer = read_all(sock)
    sock.close()
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
    proxy, _, _ = setup
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
    for sock in (idle.sock, upgraded, half_head):
        try:
            assert b"HTTP/1.1" not in read_all(sock)
        except ConnectionResetError:  # closed with bytes it had not read yet: as closed as an end of stream
            pass
        sock.close()
