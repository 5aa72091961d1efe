"""Spike for issue 16 (exact attribution): what a per-build Docker API proxy written in Python costs.

A build would talk to the daemon through a unix socket of its own that forwards every request to the
real daemon and reads the request heads on the way (method, path, query: what the build asked for).
This spike measures the smallest such proxy that could do the job, in the standard library's asyncio
(the agent imports nothing else): it parses each request head, forwards bodies by Content-Length or
chunk by chunk, and after a connection upgrade (attach/exec/BuildKit session) copies bytes both ways.

Starts its own Docker daemon (tests/harness, vfs storage) and measures, direct vs through the proxy:

  latency:    median of --calls `GET /version` round trips on a new connection each (as the docker CLI
              opens one per command), and of --cli `docker version` commands (CLI start-up included).
              Target: a few milliseconds added at most.
  throughput: a classic `docker build` (DOCKER_BUILDKIT=0) of a --size MiB context (1 GiB by default),
              wall time both ways; and the proxy's ceiling alone: --size MiB POSTed to a sink server
              that discards it. Target (issue 16): through >= 90 % of direct.
  CPU:        the proxy process's user+system CPU seconds per GiB forwarded.

    .venv/bin/python benchmarks/docker_proxy_spike.py [--calls 300] [--cli 20] [--size 1024]
"""

import argparse
import asyncio
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 256 * 1024
MiB = 1024 * 1024


# -- the proxy -----------------------------------------------------------------------------------------

async def _copy(reader, writer):
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def _copy_exactly(reader, writer, size):
    while size:
        data = await reader.read(min(CHUNK, size))
        if not data:
            raise asyncio.IncompleteReadError(b"", size)
        writer.write(data)
        await writer.drain()
        size -= len(data)


async def _requests(reader, writer, seen):
    """Client → daemon: each request head read (and noted), its body forwarded as it comes."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            lines = head.decode("latin-1").split("\r\n")
            seen.append(lines[0])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            writer.write(head)
            if "upgrade" in headers:  # attach, exec, BuildKit session: bytes both ways from here on
                await writer.drain()
                await _copy(reader, writer)
                return
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    writer.write(size_line)
                    size = int(size_line.split(b";")[0], 16)
                    await _copy_exactly(reader, writer, size + 2)
                    if size == 0:
                        break
            elif int(headers.get("content-length") or 0):
                await _copy_exactly(reader, writer, int(headers["content-length"]))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass


def serve(listen, daemon):
    """--serve LISTEN DAEMON [asyncio|threads]: the asyncio-streams proxy above, or the threaded one below."""
    seen = []

    async def connection(client_reader, client_writer):
        daemon_reader, daemon_writer = await asyncio.open_unix_connection(daemon, limit=CHUNK)
        await asyncio.gather(_requests(client_reader, daemon_writer, seen), _copy(daemon_reader, client_writer))
        client_writer.close()
        daemon_writer.close()

    async def main():
        server = await asyncio.start_unix_server(connection, listen, limit=CHUNK)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILER, RAW = range(6)


def _half_close(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _pump(src, dst):
    """Daemon → client: bytes as they come (recv_into one buffer, no copy in Python)."""
    view = memoryview(bytearray(CHUNK))
    try:
        while n := src.recv_into(view):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        _half_close(dst)


class _Splicer:
    """Bytes from one socket to another through a pipe, in the kernel (os.splice): no copy in Python."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()

    def move(self, src, dst, most):
        """Up to `most` bytes from src to dst; returns how many (0 at end of stream)."""
        n = os.splice(src.fileno(), self.write_end, most)
        left = n
        while left:
            left -= os.splice(self.read_end, dst.fileno(), left)
        return n

    def close(self):
        os.close(self.read_end)
        os.close(self.write_end)


SPLICE = False


def _pump_spliced(src, dst):
    splicer = _Splicer()
    try:
        while splicer.move(src, dst, CHUNK):
            pass
    except OSError:
        pass
    finally:
        splicer.close()
        _half_close(dst)


def _pump_requests(src, dst, seen):
    """Client → daemon: request heads parsed (and noted) in a buffer; bodies sent on from the receive
    buffer itself; after an upgrade, bytes both ways as they come."""
    view = memoryview(bytearray(CHUNK))
    acc = bytearray()
    state, left, after = HEAD, 0, HEAD
    splicer = _Splicer() if SPLICE else None
    try:
        while True:
            if SPLICE and not acc and state == CHUNK_SIZE:
                # Only the chunk's size line comes to Python (peeked, then taken exactly); its data is spliced.
                peek = src.recv(64, socket.MSG_PEEK)
                end = peek.find(b"\r\n")
                if end >= 0:
                    acc += src.recv(end + 2, socket.MSG_WAITALL)
                    continue
            if SPLICE and not acc and state in (BODY, CHUNK_DATA, RAW):  # in the kernel: no byte through Python
                n = splicer.move(src, dst, CHUNK if state == RAW else min(left, CHUNK))
                if not n:
                    break
                if state != RAW:
                    left -= n
                    if not left:
                        state = after
                continue
            if not acc and state in (BODY, CHUNK_DATA, RAW):  # the fast path: straight from the receive buffer
                n = src.recv_into(view)
                if not n:
                    break
                take = n if state == RAW else min(left, n)
                dst.sendall(view[:take])
                if state != RAW:
                    left -= take
                    if not left:
                        state = after
                if take < n:
                    acc += view[take:n]
                continue
            progressed = True
            if state == RAW:
                dst.sendall(acc)
                acc.clear()
            elif state in (BODY, CHUNK_DATA):
                take = min(left, len(acc))
                dst.sendall(acc[:take])
                del acc[:take]
                left -= take
                if not left:
                    state = after
            elif state == HEAD:
                end = acc.find(b"\r\n\r\n")
                if end < 0:
                    progressed = False
                else:
                    head = bytes(acc[:end + 4])
                    del acc[:end + 4]
                    lines = head.decode("latin-1").split("\r\n")
                    seen.append(lines[0])
                    headers = {}
                    for line in lines[1:]:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    dst.sendall(head)
                    if "upgrade" in headers:
                        state = RAW
                    elif headers.get("transfer-encoding", "").lower() == "chunked":
                        state = CHUNK_SIZE
                    elif int(headers.get("content-length") or 0):
                        state, left, after = BODY, int(headers["content-length"]), HEAD
            elif state in (CHUNK_SIZE, TRAILER):
                end = acc.find(b"\r\n")
                if end < 0:
                    progressed = False
                else:
                    line = bytes(acc[:end + 2])
                    del acc[:end + 2]
                    dst.sendall(line)
                    if state == TRAILER:
                        if line == b"\r\n":
                            state = HEAD
                    else:
                        size = int(line.split(b";")[0], 16)
                        state, left, after = (TRAILER, 0, HEAD) if size == 0 else (CHUNK_DATA, size + 2, CHUNK_SIZE)
            if not progressed or (not acc and state in (HEAD, CHUNK_SIZE, TRAILER)):
                n = src.recv_into(view)
                if not n:
                    break
                acc += view[:n]
    except (OSError, ValueError):
        pass
    finally:
        if splicer:
            splicer.close()
        _half_close(dst)


def serve_threads(listen, daemon):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen)
    listener.listen(64)
    seen = []

    def connection(client):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(daemon)
        down = threading.Thread(target=_pump_spliced if SPLICE else _pump, args=(upstream, client), daemon=True)
        down.start()
        _pump_requests(client, upstream, seen)
        down.join()
        client.close()
        upstream.close()

    while True:
        client, _ = listener.accept()
        threading.Thread(target=connection, args=(client,), daemon=True).start()


# -- the measurements -----------------------------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def version_round_trip(path):
    start = time.perf_counter()
    connection = UnixHTTPConnection(path)
    connection.request("GET", "/version")
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200, response.status
    return time.perf_counter() - start


def cli_version(docker, host):
    start = time.perf_counter()
    subprocess.run([docker, "version"], env={**os.environ, "DOCKER_HOST": f"unix://{host}"}, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(docker, host, context):
    start = time.perf_counter()
    result = subprocess.run([docker, "build", "-q", "-t", "spike/context:1", str(context)],
                            env={**os.environ, "DOCKER_HOST": f"unix://{host}", "DOCKER_BUILDKIT": "0"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - start


def sink(path):
    """A unix-socket HTTP server that reads and discards request bodies: the proxy's own ceiling."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)

    def handle(conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            left = length - len(rest)
            while left > 0:
                left -= len(conn.recv(1024 * 1024))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def post_to(path, size):
    block = b"\0" * MiB
    start = time.perf_counter()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    conn.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (size * MiB))
    for _ in range(size):
        conn.sendall(block)
    answer = conn.recv(1024)
    conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return time.perf_counter() - start


def start_proxy(listen, target, kind):
    process = subprocess.Popen([sys.executable, __file__, "--serve", listen, target, kind])
    deadline = time.monotonic() + 10
    while not os.path.exists(listen):
        assert time.monotonic() < deadline and process.poll() is None, "the proxy did not start"
        time.sleep(0.02)
    return process


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--cli", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="build context size in MiB")
    parser.add_argument("--builds", type=int, default=3, help="builds each way (median)")
    parser.add_argument("--proxy", choices=("splice", "threads", "asyncio"), default="splice")
    parser.add_argument("--serve", nargs=3, metavar=("LISTEN", "DAEMON", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        listen, daemon, kind = args.serve
        global SPLICE
        SPLICE = kind == "splice"
        return (serve if kind == "asyncio" else serve_threads)(listen, daemon)

    from tests.harness import DockerDaemon, import_busybox_image

    docker = shutil.which("docker") or "/usr/bin/docker"
    work = Path(tempfile.mkdtemp(prefix="spike-"))
    daemon = DockerDaemon()
    daemon.start()
    processes = []
    try:
        direct = daemon.host.removeprefix("unix://")
        proxied = str(work / "build.sock")
        proxy = start_proxy(proxied, direct, args.proxy)
        processes.append(proxy)
        client = daemon.client()
        image = import_busybox_image(client).tags[0]

        for path in (direct, proxied):  # warm both
            version_round_trip(path)
        cpu0 = cpu_seconds(proxy.pid)
        api = {name: statistics.median(version_round_trip(path) for _ in range(args.calls))
               for name, path in (("direct", direct), ("proxy", proxied))}
        cli = {name: statistics.median(cli_version(docker, path) for _ in range(args.cli))
               for name, path in (("direct", direct), ("proxy", proxied))}
        print(f"GET /version, median of {args.calls}: direct {api['direct'] * 1000:.2f} ms, "
              f"proxy {api['proxy'] * 1000:.2f} ms, added {(api['proxy'] - api['direct']) * 1000:.2f} ms")
        print(f"docker version, median of {args.cli}: direct {cli['direct'] * 1000:.1f} ms, "
              f"proxy {cli['proxy'] * 1000:.1f} ms, added {(cli['proxy'] - cli['direct']) * 1000:.1f} ms")
        cpu_calls = cpu_seconds(proxy.pid) - cpu0
        print(f"proxy CPU for {args.calls + args.cli} calls: {cpu_calls * 1000:.0f} ms "
              f"({cpu_calls / (args.calls + args.cli) * 1e6:.0f} µs a call)")

        # The proxy's ceiling: bytes in and thrown away.
        sink_path, sink_proxy = str(work / "sink.sock"), str(work / "sink-proxy.sock")
        sink(sink_path)
        processes.append(start_proxy(sink_proxy, sink_path, args.proxy))
        cpu0 = cpu_seconds(processes[-1].pid)
        raw = {name: statistics.median(post_to(path, args.size) for _ in range(3))
               for name, path in (("direct", sink_path), ("proxy", sink_proxy))}
        raw_cpu = (cpu_seconds(processes[-1].pid) - cpu0) / 3
        print(f"{args.size} MiB POST to a sink: direct {args.size / raw['direct']:.0f} MiB/s, "
              f"proxy {args.size / raw['proxy']:.0f} MiB/s ({raw['direct'] / raw['proxy'] * 100:.0f} % of direct); "
              f"proxy CPU {raw_cpu / (args.size / 1024):.2f} s per GiB")

        context = work / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {image}\nCMD [\"true\"]\n")
        with open(context / "blob", "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        build(docker, direct, context)  # warm: base image layers, page cache of the context
        times = {"direct": [], "proxy": []}
        cpu0 = cpu_seconds(proxy.pid)
        for _ in range(args.builds):
            for name, path in (("direct", direct), ("proxy", proxied)):
                times[name].append(build(docker, path, context))
        build_cpu = (cpu_seconds(proxy.pid) - cpu0) / args.builds
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"docker build, {args.size} MiB context, median of {args.builds}: direct {medians['direct']:.2f} s, "
              f"proxy {medians['proxy']:.2f} s ({medians['direct'] / medians['proxy'] * 100:.0f} % of direct "
              f"throughput; target >= 90 %); proxy CPU {build_cpu / (args.size / 1024):.2f} s per GiB")
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
