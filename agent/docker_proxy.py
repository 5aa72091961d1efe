"""A build's own Docker endpoint (issue 16): a unix socket that forwards every connection to the real
daemon unchanged and reports, as facts, what the build asked for and what the daemon answered.

    python -m agent.docker_proxy --listen SOCK --daemon DAEMON_SOCK --journal FILE [--owner UID]

runs one as a process of its own (the agent starts one per build; it outlives an agent restart) that
appends its facts to FILE, one JSON object a line, each line written whole by one write:

    {"kind": "listening", "pid"}                  the socket accepts connections
    {"kind": "request", "request": N, "method", "path", "query"}   a request head, before the daemon has it
    {"kind": "response", "request": N, "status"[, "container"][, "exec"][, "untagged", "deleted"]}
                                                  a response head, before the client has it; the ids of
                                                  create, exec create and image delete answers with it
                                                  (Docker's and libpod's: libpod's deleted IDs lack sha256:)
    {"kind": "container", "request": N, "container"}   a classic build's " ---> Running in <id>" line
    {"kind": "built", "request": N, "image_id"}    a build's aux {"ID": "sha256:..."} (classic, BuildKit),
                                                  or the ID a quiet build (-q) ends with
    {"kind": "pushed", "request": N, "tag", "digest", "size"}   a push's aux {"Tag", "Digest", "Size"}, or
                                                  its status "TAG: digest: DIGEST size: N" alone (Podman), or
                                                  a libpod push's {"manifestdigest"} (Podman 4.6 on; its
                                                  tag the destination's, size null)
    {"kind": "pulled", "request": N, "digest"}     a pull's (or a classic build's FROM) "Digest: " status
    {"kind": "end", "request": N}                  its response ended, or its connection closed first
    {"kind": "stopped"}                            SIGTERM or SIGINT: every connection closed, socket gone

Each fact has "time_nano" (time.time_ns() when the proxy saw it); the lines are in that order. N numbers
the requests: a proxy restarted on the same journal (mode 0600, appended to) numbers on from its last
one. path is without the /v1.NN prefix (libpod's /v4.3.1 too, its /libpod kept) and unquoted (cut at
4,096 characters); query is parse_qs's dict of lists, of the keys that name something only
(JOURNALED_KEYS: no buildargs, no credentials), each value cut at 1,024 characters. A "container" fact
repeats what a classic build's output says, and its RUN steps can print such a line too; a quiet classic
build (`-q`) says none, so its containers are in no fact.

Against a hostile build: a request whose "request" fact cannot be written (a full disk, the journal past
--journal-limit) is answered 503 and never forwarded; a request head with a bare CR or LF or another
control byte, a malformed one, or one with more than 64 values of a journaled key is answered 400; a
connection carries one request at a time (the next head is read once the previous answer ended), so no
request hides behind another; at most --max-connections connections are served. The socket is made in
the journal's folder and renamed to --listen: nothing else is done in the build's folder.

Standard library only. One thread per direction of each connection; request and response heads are
read exactly (peeked, never past their end). Request bodies (build contexts), most response bodies and
upgraded streams (attach, exec, BuildKit `/session` and `/grpc`) move socket to socket through a pipe in
the kernel (os.splice) where Linux has it; only the JSON-lines answers of build, push and pull, and
the small JSON answers named above, pass through Python to be read. benchmarks/docker_proxy_spike.py
measured this design: >= 90 % of direct throughput for a 1 GiB build context, about 0-4 ms added per
API call.
"""

import argparse
import collections
import contextlib
import errno
import itertools
import json
import logging
import os
import re
import selectors
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
PEEK = 64 * 1024
LINE_PEEK = 64  # a chunk's size line fits, usually
MAX_HEAD = 1024 * 1024  # Go's net/http default (MaxHeaderBytes): the daemon accepts no longer head
MAX_LINE = 4096  # a chunk's size line or a trailer line
MAX_CAPTURED_BODY = 64 * 1024
MAX_STREAM_LINE = 1024 * 1024  # a longer JSON line of a build, push or pull answer is passed on unread
SPLICE = hasattr(os, "splice")  # Linux; elsewhere (or if the kernel refuses) recv_into + sendall
UNIX_PATH_MAX = 107  # bytes of a unix socket's path (Linux's sun_path, less its NUL)
MAX_CONNECTIONS = 256  # per endpoint; a build's docker CLI opens a few at a time
JOURNAL_LIMIT = 256 * 1024 * 1024  # past it a request is refused (503), never forwarded unrecorded
# A "request" fact keeps only the query keys that say what a request names (agent.attribution reads
# them; "q" tells a quiet build), each value cut at MAX_VALUE characters; a request with more than
# MAX_VALUES of one of them is refused: no build tags an image 64 times, and each value costs the agent.
# Libpod's API (the podman CLI's, issue 17) names its pull's image `reference`, its push's `destination` (not
# its removal's `images`: the answer names what it deleted, and a `podman rmi` of 65 images is no abuse).
JOURNALED_KEYS = ("t", "tag", "repo", "fromImage", "fromSrc", "container", "name", "force", "q", "reference",
                  "destination")
MAX_VALUES = 64
MAX_VALUE = 1024
MAX_PATH = 4096
# What the daemons' routers take for a version (dockerd: /v{version:[0-9.]+}, Podman: /v{version:[0-9][0-9.]*},
# its libpod API's is /v4.3.1): a path the daemon routes as /containers/create is journaled so.
_VERSION_PREFIX = re.compile(r"^/v[0-9.]+(?=/|$)")
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes "²", which int() refuses
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
# What a request head's line may not hold (the daemon's parser could read it otherwise: a bare "\n"
# ends a line for Go, not for this parser): control bytes but the tab of a header value, and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CONTROL_OR_TAB = re.compile(rb"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PUSHED_STATUS = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}): digest: (sha256:[0-9a-f]{64}) size: ([0-9]{1,19})")
_RUNNING_IN = re.compile(r"^ ---> Running in ([0-9a-f]{12,64})$", re.MULTILINE)
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")

# What each answer's body is read for: (method, path pattern, status of a readable answer, use).
# "stream": JSON lines read as they pass; anything else: one small JSON answer read whole first.
_READ = [
    ("POST", re.compile(r"/build"), 200, "stream"),
    ("POST", re.compile(r"/images/.+/push"), 200, "stream"),
    ("POST", re.compile(r"/images/create"), 200, "stream"),
    ("POST", re.compile(r"/containers/create"), 201, "container"),
    ("POST", re.compile(r"/containers/[^/]+/exec"), 201, "exec"),
    ("DELETE", re.compile(r"/images/.+"), 200, "image_delete"),
    # Podman's libpod API (the podman CLI): its build says no image ID but as output; its pull no digest.
    ("POST", re.compile(r"/libpod/images/.+/push"), 200, "stream"),
    ("POST", re.compile(r"/libpod/containers/create"), 201, "container"),
    ("POST", re.compile(r"/libpod/containers/[^/]+/exec"), 201, "exec"),
    ("DELETE", re.compile(r"/libpod/images/.+"), 200, "image_delete"),
]


class _Malformed(Exception):
    """A head or a chunk's size line that is not HTTP/1.x: the connection is closed."""


class _Truncated(Exception):
    """The stream ended inside a head or a body."""


class _Refused(Exception):
    """A request answered by the proxy itself and never forwarded: (status, reason, text); the
    connection is closed after the answer."""


def _headers(lines):
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise _Malformed(f"bad header line {line[:80]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    return headers


def _framing(headers):
    """("chunked", None), ("length", n) or (None, None) from a message's headers."""
    encodings = headers.get("transfer-encoding")
    lengths = headers.get("content-length")
    if encodings:
        if lengths or [e.lower() for e in encodings] != ["chunked"]:
            raise _Malformed(f"unsupported framing: Transfer-Encoding {encodings}, Content-Length {lengths}")
        return "chunked", None
    if lengths:
        values = {v for value in lengths for v in (p.strip() for p in value.split(","))}
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise _Malformed(f"bad Content-Length {lengths}")
        return "length", int(values.pop())
    return None, None


def _strict_line(line: bytes, what="line"):
    """A line of a request's head, chunk size line or trailer (without its CRLF) that holds no byte the
    daemon could read otherwise: a bare CR or LF, another control byte but a tab, DEL."""
    if _CONTROL.search(line):
        raise _Malformed(f"a control byte in a request's {what} {line[:80]!r}")


def _chunk_size(line, strict=False):
    """The size a chunk's size line (with its CRLF) says. strict (requests): nothing but hex digits and
    an extension without control bytes; responses (the daemon's) may have spaces around."""
    if strict:
        _strict_line(line[:-2], "chunk size line")
        size = line[:-2].split(b";")[0].rstrip(b" \t")
    else:
        size = line[:-2].split(b";")[0].strip()
    if not _CHUNK_SIZE.fullmatch(size):
        raise _Malformed(f"bad chunk size line {line[:80]!r}")
    return int(size, 16)


def _strict_head(head: bytes):
    """A request head's lines (latin-1, without their CRLF); _Malformed if a line ends with a bare LF
    or holds a bare CR or another control byte (a tab only in a header's value)."""
    lines = head[:-4].split(b"\r\n")
    if _CONTROL_OR_TAB.search(lines[0]):
        raise _Malformed(f"a control byte in the request line {lines[0][:80]!r}")
    for line in lines[1:]:
        _strict_line(line, "header line")
    return [line.decode("latin-1") for line in lines]


class _Request:
    __slots__ = ("method", "path", "query", "framing", "length", "number")

    def __init__(self, head: bytes):
        lines = _strict_head(head)
        parts = lines[0].split(" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise _Malformed(f"bad request line {lines[0][:80]!r}")
        method, target, _ = parts
        headers = _headers(lines[1:])
        self.framing, self.length = _framing(headers)
        split = urllib.parse.urlsplit(target)
        if not split.path.startswith("/"):
            raise _Malformed(f"bad request target {target[:80]!r}")
        self.method = method
        self.path = _VERSION_PREFIX.sub("", urllib.parse.unquote(split.path)) or "/"
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self.number = None

    def fields(self):
        """Its "request" fact's fields: only what says what it names (JOURNALED_KEYS), each value cut at
        MAX_VALUE characters, the path at MAX_PATH; _Refused if a key has more than MAX_VALUES values."""
        query = {}
        for key in JOURNALED_KEYS:
            values = self.query.get(key)
            if values is None:
                continue
            if len(values) > MAX_VALUES:
                raise _Refused(400, "Bad Request", f"too many values for {key} ({len(values)}, at most {MAX_VALUES})")
            query[key] = [value[:MAX_VALUE] for value in values]
        return {"method": self.method[:MAX_VALUE], "path": self.path[:MAX_PATH], "query": query}

    def reading(self, status):
        """How its answer's body is read: "stream", a small JSON answer's kind, or None (moved unread)."""
        for method, path, readable, use in _READ:
            if self.method == method and status == readable and path.fullmatch(self.path):
                return use
        return None


def _response(head: bytes):
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise _Malformed(f"bad status line {lines[0][:80]!r}")
    headers = _headers(lines[1:])
    return int(code), headers


def answer_fields(use, body):
    """The ids a small JSON answer carries, as fields of its "response" fact ({} if it has none)."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if use in ("container", "exec"):
        if isinstance(answer, dict) and isinstance(answer.get("Id"), str):
            return {use: answer["Id"]}
        return {}
    if isinstance(answer, dict):  # libpod's: {"Untagged": [...], "Deleted": [IDs without sha256:], ...}
        return {key.lower(): [i for i in answer[key] if isinstance(i, str)]
                for key in ("Untagged", "Deleted") if isinstance(answer.get(key), list)}
    if not isinstance(answer, list):
        return {}
    items = [item for item in answer if isinstance(item, dict)]
    return {"untagged": [i["Untagged"] for i in items if isinstance(i.get("Untagged"), str)],
            "deleted": [i["Deleted"] for i in items if isinstance(i.get("Deleted"), str)]}


def stream_facts(line):
    """The facts one JSON line of a build, push or pull answer carries: [(kind, fields), ...].

    Only the daemon writes aux objects and statuses; a classic build's "stream" text also carries its
    RUN steps' output, so a "container" fact is what the output says, not proof."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return []
    if not isinstance(message, dict):
        return []
    facts = []
    text, aux, status = message.get("stream"), message.get("aux"), message.get("status")
    if isinstance(text, str) and "Running in " in text:
        facts += [("container", {"container": m[1]}) for m in _RUNNING_IN.finditer(text)]
    if isinstance(aux, dict):
        if isinstance(aux.get("ID"), str) and _IMAGE_ID.fullmatch(aux["ID"]):
            facts.append(("built", {"image_id": aux["ID"]}))  # classic's aux, BuildKit's "moby.image.id"
        if isinstance(aux.get("Digest"), str):
            facts.append(("pushed", {"tag": aux.get("Tag"), "digest": aux["Digest"], "size": aux.get("Size")}))
    if isinstance(status, str) and status.startswith("Digest: "):
        facts.append(("pulled", {"digest": status.removeprefix("Digest: ").strip()}))
    if isinstance(status, str) and not isinstance(aux, dict) and (pushed := _PUSHED_STATUS.fullmatch(status)):
        # Podman's push says its digest only so; Docker's says it so too, then again in an aux line (the same fact).
        facts.append(("pushed", {"tag": pushed[1], "digest": pushed[2], "size": int(pushed[3])}))
    return facts


def pushed_manifest(line):
    """The digest a libpod push's line says ({"manifestdigest": "sha256:..."}, Podman 4.6 on), else None: its
    answer says no tag (the request's destination does). Podman 4.3's says none at all."""
    try:
        digest = json.loads(line).get("manifestdigest")
    except (ValueError, RecursionError, AttributeError):
        return None
    return digest if isinstance(digest, str) and _IMAGE_ID.fullmatch(digest) else None


def reference_tag(reference):
    """The tag of an image reference as a push names it ("latest" if it says none; None if it names a digest)."""
    reference = reference.removeprefix("docker://")
    if "@" in reference:
        return None
    name, colon, tag = reference.rpartition(":")
    return tag if colon and "/" not in tag else "latest"


def quiet_build_id(line):
    """The image ID a quiet build's line says ({"stream": "sha256:...\\n"}), else None."""
    try:
        text = json.loads(line).get("stream")
    except (ValueError, RecursionError, AttributeError):
        return None
    if isinstance(text, str) and _IMAGE_ID.fullmatch(text.rstrip("\n")):
        return text.rstrip("\n")
    return None


def _true(values):
    """A query flag as the daemon reads it (Go's httputils.BoolValue, the first value): set unless "", 0,
    no, false or none."""
    return bool(values) and values[0].strip().lower() not in ("", "0", "no", "false", "none")


class LineSplitter:
    """Splits the bytes of a stream into lines for on_line (without their b"\\n"); a line longer than
    `limit` is dropped whole, so one endless line cannot grow the buffer."""

    def __init__(self, on_line, limit=MAX_STREAM_LINE):
        self.on_line = on_line
        self.limit = limit
        self.buffer = bytearray()
        self.skipping = False

    def feed(self, data):
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if not self.skipping and len(self.buffer) + end - start <= self.limit:
                self.buffer += data[start:end]
                self.on_line(bytes(self.buffer))
            self.buffer.clear()
            self.skipping = False
            start = end + 1
        if not self.skipping:
            if len(self.buffer) + len(data) - start > self.limit:
                self.buffer.clear()
                self.skipping = True
            else:
                self.buffer += data[start:]

    def close(self):
        """The stream ended: its last line, if it had no b"\\n"."""
        if self.buffer and not self.skipping:
            self.on_line(bytes(self.buffer))
        self.buffer.clear()
        self.skipping = False


class _Mover:
    """Moves bytes from one socket to another: in the kernel through a pipe (os.splice) or, where that is
    not possible, through one buffer in Python."""

    def __init__(self):
        self.pipe = None
        self.view = None
        if SPLICE:
            try:
                self.pipe = os.pipe()
                try:  # a pipe as large as a read: fewer round trips (refused above pipe-max-size: keep 64 KiB)
                    import fcntl
                    fcntl.fcntl(self.pipe[1], fcntl.F_SETPIPE_SZ, CHUNK)
                except (OSError, ImportError, AttributeError):
                    pass
            except OSError:
                self.pipe = None
        self.spliced = False

    def move(self, src, dst, most):
        """Up to `most` bytes from src to dst; how many (0: src ended)."""
        if self.pipe:
            read_end, write_end = self.pipe
            try:
                n = os.splice(src.fileno(), write_end, most)
            except OSError as exc:
                if self.spliced or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.close()  # this kernel cannot splice these sockets: copy from now on
                return self.move(src, dst, most)
            self.spliced = True
            left = n
            while left:
                left -= os.splice(read_end, dst.fileno(), left)
            return n
        if self.view is None:
            self.view = memoryview(bytearray(CHUNK))
        n = src.recv_into(self.view, min(most, CHUNK))
        if n:
            dst.sendall(self.view[:n])
        return n

    def close(self):
        if self.pipe:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None


class _Direction:
    """One direction of a connection: heads read exactly, everything else moved as it comes."""

    def __init__(self, src, dst, strict=False):
        self.src, self.dst = src, dst
        self.strict = strict  # a client's requests: chunk size lines and trailers checked as heads are
        self.mover = _Mover()

    def read_until(self, terminator, limit, eof_ok=False, peek_size=PEEK):
        """Bytes up to and including `terminator`, taken from the socket without reading past it;
        None if the stream ends before any byte (and eof_ok). `peek_size`: how much to look at at once
        (a chunk's size line is short: peeking a whole chunk's data each time would copy it for nothing)."""
        got = bytearray()
        keep = len(terminator) - 1
        while True:
            peek = self.src.recv(peek_size, socket.MSG_PEEK)
            if not peek:
                if not got and eof_ok:
                    return None
                raise _Truncated()
            tail = bytes(got[-keep:]) if got else b""
            found = (tail + peek).find(terminator)
            take = found + len(terminator) - len(tail) if found >= 0 else len(peek)
            got += self.recv_exactly(take)
            if found >= 0:
                return bytes(got)
            if len(got) > limit:
                raise _Malformed(f"no end of head in {limit} bytes")

    def recv_exactly(self, n):
        data = bytearray()
        while len(data) < n:
            part = self.src.recv(n - len(data))
            if not part:
                raise _Truncated()
            data += part
        return bytes(data)

    def send(self, data):
        self.dst.sendall(data)

    def forward(self, n):
        while n:
            moved = self.mover.move(self.src, self.dst, min(n, CHUNK))
            if not moved:
                raise _Truncated()
            n -= moved

    def forward_until_end(self):
        while self.mover.move(self.src, self.dst, CHUNK):
            pass

    def forward_chunked(self):
        """A chunked body: only its size lines and trailers come to Python; the data is moved."""
        while True:
            line = self.read_until(b"\r\n", MAX_LINE, peek_size=LINE_PEEK)
            size = _chunk_size(line, self.strict)
            self.send(line)
            if not size:
                break
            self.forward(size + 2)  # the data and its CRLF
        while line != b"\r\n":  # trailer lines, up to the empty one
            line = self.read_until(b"\r\n", MAX_LINE)
            if self.strict and line != b"\r\n":
                _strict_line(line[:-2], "trailer line")
                _headers([line[:-2].decode("latin-1")])
            self.send(line)

    def pieces(self, framing, length):
        """A body read through Python, as it comes: (raw, data) pairs, raw the bytes to pass on as they
        are, data what they carry (without the chunked framing). Read exactly to the body's end."""
        if framing == "chunked":
            while True:
                line = self.read_until(b"\r\n", MAX_LINE)
                size = _chunk_size(line)
                if not size:
                    break
                yield line, b""
                yield from self.pieces("length", size)
                yield self.recv_exactly(2), b""  # the data's CRLF
            ending = bytearray(line)
            while line != b"\r\n":  # trailer lines, up to the empty one
                line = self.read_until(b"\r\n", MAX_LINE)
                ending += line
            yield bytes(ending), b""
        elif framing == "length":
            while length:
                data = self.src.recv(min(length, CHUNK))
                if not data:
                    raise _Truncated()
                length -= len(data)
                yield data, data
        else:
            while data := self.src.recv(CHUNK):
                yield data, data

    def close(self):
        self.mover.close()


def _shutdown(sock, how):
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _answer(sock, status, reason, text):
    """A short plain text answer of the proxy's own, with which it closes a connection."""
    body = (text + "\n").encode()
    try:
        sock.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
    except OSError:
        pass


class _Connection:
    """A client's connection and the proxy's own to the daemon: two threads, `up` (requests) and `down`
    (responses). One request at a time: the next request's head is read (reported, forwarded) only once
    the previous one's response has ended, so that no request is in flight behind another one."""

    def __init__(self, proxy, client, number):
        self.proxy = proxy
        self.client = client
        self.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pending = collections.deque()  # requests forwarded whose final response has not come yet
        self.answered = threading.Condition()
        self.state = "idle"  # "busy" (a request forwarded, its response not ended), "upgraded", "closed"
        self.up = threading.Thread(target=self.run, name=f"docker-proxy-{number}-up", daemon=True)
        self.down = threading.Thread(target=self.responses, name=f"docker-proxy-{number}-down", daemon=True)

    def abort(self):
        """Both sides closed: wakes both threads of this connection."""
        _shutdown(self.client, socket.SHUT_RDWR)
        _shutdown(self.upstream, socket.SHUT_RDWR)

    def settle(self, state):
        """The response thread's word: the response "ended", the connection was "upgraded" or "closed"
        (both final)."""
        with self.answered:
            if self.state not in ("upgraded", "closed"):
                self.state = state
            self.answered.notify_all()

    def run(self):
        try:
            try:
                self.upstream.connect(self.proxy.daemon_path)
            except OSError as exc:
                self.refuse(exc)
                return
            if self.proxy._stopping:  # stop() may have shut the sockets down before this one connected
                return
            self.down.start()
            self.requests()
            self.down.join()
        finally:
            self.client.close()
            self.upstream.close()
            self.proxy._forget(self)

    def refuse(self, exc):
        text = f"the Docker daemon's socket {self.proxy.daemon_path} cannot be reached: {exc.strerror or exc}"
        way = _Direction(self.client, None)
        try:  # the request's head first, so that the client reads the answer rather than a broken pipe
            self.client.settimeout(5)
            way.read_until(b"\r\n\r\n", MAX_HEAD, eof_ok=True)
        except (OSError, _Malformed, _Truncated):
            pass
        finally:
            way.close()
        _answer(self.client, 502, "Bad Gateway", text)

    def requests(self):
        """Client to daemon, one request after another, each once the previous one was answered; after
        an upgrade, raw bytes."""
        way = _Direction(self.client, self.upstream, strict=True)
        try:
            while True:
                head = way.read_until(b"\r\n\r\n", MAX_HEAD, eof_ok=True)
                if head is None:
                    break
                request = self.admit(head)
                with self.answered:
                    closed = self.state == "closed"
                    if not closed:
                        self.state = "busy"
                        self.pending.append(request)
                if closed:  # the daemon closed the connection: the request goes nowhere
                    self.emit("end", request)
                    break
                way.send(head)
                if request.framing == "chunked":
                    way.forward_chunked()
                elif request.length:
                    way.forward(request.length)
                state = self.await_answer()
                if state == "upgraded":
                    way.forward_until_end()
                    break
                if state == "closed":
                    break
            _shutdown(self.upstream, socket.SHUT_WR)  # the client's half-close, passed on
        except _Refused as refused:
            status, reason, text = refused.args
            _answer(self.client, status, reason, text)
            self.abort()
        except (OSError, _Malformed, _Truncated) as exc:
            if not self.proxy._stopping:
                logger.debug("docker proxy: client connection closed: %r", exc)
            self.abort()
        finally:
            way.close()

    def admit(self, head):
        """The request of a head, numbered and its "request" fact recorded; _Refused (nothing forwarded)
        if the head is malformed, names too much, or its fact cannot be recorded."""
        try:
            request = _Request(head)
        except _Malformed as exc:
            raise _Refused(400, "Bad Request", f"this build's Docker endpoint refused a malformed request: {exc}") \
                from None
        fields = request.fields()
        request.number = self.proxy._number()
        failure = self.proxy._emit({"kind": "request", "request": request.number, **fields})
        if failure is not None:
            raise _Refused(503, "Service Unavailable",
                           f"this build's Docker endpoint cannot record requests: {_reason(failure)}")
        return request

    def await_answer(self):
        """Waits until the response to the request just forwarded ended (or the connection was upgraded
        or closed): its state then. Meanwhile the client's end, if it comes, is passed on to the daemon
        (which then ends what it was doing, a stream of events or logs); the client's next bytes wait."""
        with self.answered:
            if self.state != "busy":
                return self.state
        try:
            ended = not self.client.recv(1, socket.MSG_PEEK)
        except OSError:
            ended = True
        if ended:
            _shutdown(self.upstream, socket.SHUT_WR)
        with self.answered:
            while self.state == "busy":
                self.answered.wait()
            return self.state

    def responses(self):
        """Daemon to client: each response head read to pair it with its request, its body streamed."""
        way = _Direction(self.upstream, self.client)
        request = None  # the request whose answer is passing
        try:
            while True:
                head = way.read_until(b"\r\n\r\n", MAX_HEAD, eof_ok=True)
                if head is None:
                    break
                try:
                    status, headers = _response(head)
                    framing, length = _framing(headers)
                except _Malformed:
                    way.send(head)  # not ours to judge: passed on as it is, then raw
                    way.forward_until_end()
                    break
                if 100 <= status < 200 and status != 101:
                    way.send(head)  # 100 Continue and the like: the final response is still to come
                    continue
                request = self.pending.popleft() if self.pending else None
                if status == 101 or (request and request.method == "CONNECT" and status < 300):
                    self.emit("response", request, status=status)
                    self.settle("upgraded")
                    way.send(head)
                    way.forward_until_end()
                    break
                if (request and request.method == "HEAD") or status in (204, 304):
                    framing, length = "length", 0
                use = request.reading(status) if request and (framing != "length" or length) else None
                if use == "stream":
                    self.emit("response", request, status=status)
                    way.send(head)
                    self.stream(way, request, framing, length)
                elif use:
                    self.small_answer(way, request, status, use, head, framing, length)
                else:
                    self.emit("response", request, status=status)
                    way.send(head)
                    if framing == "chunked":
                        way.forward_chunked()
                    elif framing == "length":
                        way.forward(length)
                    else:  # the body ends when the daemon closes
                        way.forward_until_end()
                if framing is None:
                    break
                self.emit("end", request)
                request = None
                self.settle("ended")
            _shutdown(self.client, socket.SHUT_WR)
        except (OSError, _Malformed, _Truncated) as exc:
            if not self.proxy._stopping:
                logger.debug("docker proxy: daemon connection closed: %r", exc)
            self.abort()
        finally:
            way.close()
            self.emit("end", request)
            with self.answered:  # no request comes after: those that never had an answer are ended
                self.state = "closed"
                while self.pending:
                    self.emit("end", self.pending.popleft())
                self.answered.notify_all()

    def stream(self, way, request, framing, length):
        """A build's, push's or pull's JSON lines: each line's facts reported before the client has it.

        A quiet build (`docker build -q`) says only its image's ID, as its last line; a failed one
        ends with its error after its steps' output, which may say anything. So a quiet build's line
        that is an image ID is held back until the next line (then it was output) or the answer's
        end (then it is the ID: reported, then passed on)."""
        quiet = request.method == "POST" and request.path == "/build" and _true(request.query.get("q"))
        libpod_push = request.path.startswith("/libpod/") and request.path.endswith("/push")
        last = None  # the image ID the last line said, in a quiet build's answer
        pushed = set()  # Docker says a push's digest twice (status, then aux): one fact

        def facts(line):
            nonlocal last
            found = stream_facts(line)
            if libpod_push and (digest := pushed_manifest(line)):
                destination = (request.query.get("destination") or [""])[0] or request.path[len("/libpod/images/"):-5]
                if (tag := reference_tag(destination)) is not None:
                    found.append(("pushed", {"tag": tag, "digest": digest, "size": None}))
            for kind, fields in found:
                if kind == "pushed":
                    said = repr((fields["tag"], fields["digest"]))  # as said: an aux's Tag may be any JSON
                    if said in pushed:
                        continue
                    pushed.add(said)
                self.emit(kind, request, **fields)
            last = quiet_build_id(line) if quiet else None

        lines = LineSplitter(facts)
        held = bytearray()
        for raw, data in way.pieces(framing, length):
            lines.feed(data)
            if last and len(held) + len(raw) <= MAX_STREAM_LINE:
                held += raw
                continue
            last = None  # more came than an answer's end: it was output
            if held:
                way.send(held)
                held.clear()
            way.send(raw)
        lines.close()
        if last:
            self.emit("built", request, image_id=last)
        way.send(held)

    def small_answer(self, way, request, status, use, head, framing, length):
        """A small JSON answer held back until read whole and its ids reported: nothing the client does
        with them comes first. A larger one is passed on unread."""
        pieces = way.pieces(framing, length)
        held, body = [head], bytearray()
        for raw, data in pieces:
            held.append(raw)
            body += data
            if len(body) > MAX_CAPTURED_BODY:
                logger.warning("docker proxy: %s %s answered more than %d bytes: passed on unread",
                               request.method, request.path, MAX_CAPTURED_BODY)
                fields = {}
                break
        else:
            fields = answer_fields(use, body)
        self.emit("response", request, status=status, **fields)
        way.send(b"".join(held))
        for raw, _ in pieces:
            way.send(raw)

    def emit(self, kind, request, **fields):
        if request is not None:
            self.proxy._emit({"kind": kind, "request": request.number, **fields})


class DockerProxy:
    """A unix socket at listen_path (mode 0600, given to uid `owner` if set) whose connections go to the
    daemon's socket at daemon_path unchanged. on_fact(fact) gets each fact of a request (the module's
    docstring lists them) as a dict with "time_nano", in order per request: "request" before the
    daemon has the head, "response" (with the ids of create, exec create and image delete answers)
    before the client has it, then the stream's facts, then "end"; and {"kind": "listening", "pid"} once
    it listens, before any connection's facts, {"kind": "stopped"} after stop(). It is called from the
    connections' threads, one call at a time, in the order of the facts' time_nano; if it raises for a
    "request" fact, that request is answered 503 and never forwarded. Requests are numbered from
    first_request on.

    The socket is made in private_dir (by default listen_path's own folder), which must be the proxy's
    own (its owner's, writable by nobody else), then renamed to listen_path: nothing is done at
    listen_path but that rename, which replaces what someone put there without following it. At most
    max_connections connections are served at once; more are answered 503 and closed."""

    def __init__(self, listen_path, daemon_path, on_fact=None, owner=None, first_request=1, private_dir=None,
                 max_connections=MAX_CONNECTIONS):
        self.listen_path = str(listen_path)
        self.daemon_path = str(daemon_path)
        self.on_fact = on_fact
        self.owner = owner
        self.private_dir = str(private_dir) if private_dir is not None else os.path.dirname(self.listen_path)
        self.max_connections = max_connections
        self.turned_away = 0  # connections refused for being one too many
        self._listener = None
        self._inode = None
        self._wake = None
        self._thread = None
        self._connections = set()
        self._lock = threading.Lock()
        self._facts_lock = threading.Lock()
        self._count = 0
        self._requests = itertools.count(first_request)
        self._stopping = False
        self._said = {}  # what was logged when: some warnings once a minute at most

    def start(self):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._inode = _bind_privately(listener, self.listen_path, self.private_dir, self.owner)
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._wake = os.pipe()
        self._stopping = False
        self._emit({"kind": "listening", "pid": os.getpid()})  # before any connection's fact
        self._thread = threading.Thread(target=self._accept, name="docker-proxy-accept", daemon=True)
        self._thread.start()
        return self

    def _accept(self):
        """Accepts connections until stop(). When accept() or a connection's start fails (no file
        descriptor left: EMFILE, ENFILE; no thread), it waits, 50 ms doubling to 1 s, rather than spin,
        and says so once per outage."""
        backoff = 0
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while not self._stopping:
                if backoff:
                    selector.unregister(self._listener)
                    selector.select(backoff)  # only stop() wakes it
                    selector.register(self._listener, selectors.EVENT_READ)
                    if self._stopping:
                        return
                selector.select()
                try:
                    failure = self._take()
                except OSError as exc:
                    failure = exc
                if failure is None:
                    if backoff:
                        logger.warning("docker proxy: accepting connections again")
                    backoff = 0
                elif failure is not False:
                    if self._stopping:
                        return
                    if not backoff:
                        logger.warning("docker proxy: cannot take connections (%s): waiting to try again", failure)
                    backoff = min(backoff * 2, 1.0) if backoff else 0.05

    def _take(self):
        """One connection accepted and started: None; False if there was none to accept; what failed."""
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        try:
            client.setblocking(True)
            with self._lock:
                if self._stopping:
                    client.close()
                    return False
                if len(self._connections) >= self.max_connections:
                    self._turn_away(client)
                    return None
                self._count += 1
                connection = _Connection(self, client, self._count)
                self._connections.add(connection)
            try:
                connection.up.start()
            except RuntimeError as exc:  # no thread to be had
                self._forget(connection)
                connection.upstream.close()
                raise OSError(errno.EAGAIN, str(exc)) from None
        except OSError:
            client.close()
            raise
        return None

    def _turn_away(self, client):
        """A connection over max_connections: answered 503 and closed at once (not waited on)."""
        self.turned_away += 1
        client.setblocking(False)
        _answer(client, 503, "Service Unavailable",
                f"this build's Docker endpoint has {self.max_connections} connections open already")
        client.close()
        self._say_once_a_minute("connections", "docker proxy: %d connections open: turned %d away so far",
                                self.max_connections, self.turned_away)

    def _say_once_a_minute(self, topic, message, *args):
        now = time.monotonic()
        if now - self._said.get(topic, -60) >= 60:
            self._said[topic] = now
            logger.warning(message, *args)

    def _forget(self, connection):
        with self._lock:
            self._connections.discard(connection)

    def _number(self):
        with self._lock:
            return next(self._requests)

    def _emit(self, fact):
        """fact given to on_fact, its time_nano set; what on_fact raised (logged), else None."""
        if not self.on_fact:
            return None
        with self._facts_lock:  # one at a time: the journal's lines are in the order of their times
            fact["time_nano"] = time.time_ns()
            try:
                self.on_fact(fact)
            except Exception as exc:
                self._say_once_a_minute("facts", "docker proxy: a %s fact could not be recorded: %s",
                                        fact.get("kind"), _reason(exc))
                return exc
        return None

    def stop(self):
        """The socket removed, every open connection closed, every thread joined."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake[1], b"x")
        self._thread.join()
        self._listener.close()
        for fd in self._wake:
            os.close(fd)
        try:
            status = os.lstat(self.listen_path)
            if stat.S_ISSOCK(status.st_mode) and (status.st_dev, status.st_ino) == self._inode:
                os.unlink(self.listen_path)
        except FileNotFoundError:
            pass
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        for connection in connections:
            connection.up.join()
        self._thread = self._listener = self._wake = None
        self._emit({"kind": "stopped"})

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _reason(exc):
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


_binds = itertools.count()


def _bind_privately(listener, listen_path, private_dir, owner):
    """listener bound to a socket made in private_dir (born 0600: umask 0o177; given to owner there),
    then renamed to listen_path, which the build's user may own and change at any time: nothing done
    there can be turned onto another file by a symbolic link. What is at listen_path stays unless it is
    a stale socket (OSError). The socket's (st_dev, st_ino)."""
    status = os.stat(private_dir)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{private_dir} is not a folder of this user's own that nobody else can write "
                                   "(the socket is made there first)")
    temporary = os.path.join(private_dir, f".{os.getpid()}-{next(_binds)}.sock")
    if len(os.fsencode(temporary)) > UNIX_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"{temporary} is longer than the {UNIX_PATH_MAX} bytes of a unix "
                                          "socket's path (the socket is made there first)")
    _remove_stale_socket(listen_path)
    if os.path.lexists(listen_path):
        raise OSError(errno.EEXIST, f"{listen_path} exists and is not a stale socket")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a process of the same pid that died
    mask = os.umask(0o177)
    try:
        listener.bind(temporary)
    finally:
        os.umask(mask)
    try:
        os.chmod(temporary, 0o600)  # in the private folder: nobody can have put a link in its place
        if owner is not None:
            os.lchown(temporary, owner, -1)
        made = os.lstat(temporary)
        try:
            os.rename(temporary, listen_path)
        except OSError as exc:
            raise OSError(exc.errno, f"the socket made in {private_dir} cannot be moved to {listen_path}: "
                                     f"{exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return made.st_dev, made.st_ino


def _remove_stale_socket(path):
    """A socket left at path by a proxy that died (nothing answers it) is removed; a socket someone
    listens on, or anything that is not a socket, stays."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)  # a listener with a full backlog keeps connect() waiting: it is alive
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()


class Journal:
    """The file of facts the agent tails: one JSON object a line, each line appended whole by one write
    (O_APPEND), unbuffered. A journal that exists is continued: a proxy restarted for the same build
    numbers its requests on from the last one there (last_request), so that a number names one request.

    Past `limit` bytes a "request" fact is refused (OSError EFBIG: the request is then refused, not
    forwarded), and so are the facts a stream says (container, built, pushed, pulled); the response and
    end of requests already recorded are still written (one each)."""

    def __init__(self, path, limit=JOURNAL_LIMIT):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.lock = threading.Lock()
        self.limit = limit
        self.last_request = 0
        self.cut = False  # a write failed in the middle of a line: the next one starts a line of its own
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f:
            read, written = os.fstat(f.fileno()), os.fstat(self.fd)
            if (read.st_dev, read.st_ino) != (written.st_dev, written.st_ino):
                os.close(self.fd)
                raise OSError(errno.EEXIST, f"{path} was replaced while being opened")
            last = b"\n"
            for last in f:
                try:
                    fact = json.loads(last)
                    self.last_request = max(self.last_request, int(fact.get("request") or 0))
                except (ValueError, RecursionError, TypeError, AttributeError):
                    pass
        self.size = os.fstat(self.fd).st_size
        self.cut = not last.endswith(b"\n")  # a line cut short (a full disk)

    def write(self, fact):
        line = (json.dumps(fact, separators=(",", ":")) + "\n").encode()
        with self.lock:
            if self.size + len(line) > self.limit and fact.get("kind") not in ("response", "end", "listening",
                                                                                "stopped"):
                raise OSError(errno.EFBIG, f"the journal is full ({self.limit} bytes)")
            if self.cut:
                line = b"\n" + line
            view = memoryview(line)
            while view:  # one write unless the disk fills up
                try:
                    written = os.write(self.fd, view)
                except OSError:
                    self.cut = self.cut or len(view) < len(line)
                    raise
                self.size += written
                view = view[written:]
            self.cut = False

    def close(self):
        os.close(self.fd)


def _raise_open_files_limit():
    """The soft limit of open files raised to the hard one: each connection takes six (two sockets,
    two pipes)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError) as exc:
        logger.warning("cannot raise the limit of open files: %s", exc)


def main(argv=None):
    """The proxy as a process: serves until SIGTERM or SIGINT, then stops and exits 0."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.docker_proxy",
        description="A build's own Docker endpoint: forwards the connections to --listen to the daemon and "
                    "appends the facts of what passed to --journal, until SIGTERM or SIGINT.")
    parser.add_argument("--listen", required=True, help="the socket to create (the build's DOCKER_HOST)")
    parser.add_argument("--daemon", required=True, help="the Docker daemon's socket")
    parser.add_argument("--journal", required=True,
                        help="the file the facts are appended to; its folder must be this user's own (the "
                             "socket is made there, then moved to --listen)")
    parser.add_argument("--owner", type=int, help="the uid the socket is given to (the build's user)")
    parser.add_argument("--journal-limit", type=int, default=JOURNAL_LIMIT, metavar="BYTES",
                        help="past this size of the journal, requests are refused (503) (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections served at once; more are refused (503) (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s docker_proxy[%(process)d] %(levelname)s %(message)s")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # before any thread: only sigwait() takes them
    _raise_open_files_limit()
    try:
        journal = Journal(args.journal, limit=args.journal_limit)
    except OSError as exc:
        logger.error("cannot open the journal %s: %s", args.journal, exc)
        return 1
    proxy = DockerProxy(args.listen, args.daemon, on_fact=journal.write, owner=args.owner,
                        first_request=journal.last_request + 1,
                        private_dir=os.path.dirname(os.path.abspath(args.journal)),
                        max_connections=args.max_connections)
    try:
        proxy.start()
    except OSError as exc:
        logger.error("cannot listen at %s: %s", args.listen, exc)
        return 1
    signal.sigwait(stop_signals)
    proxy.stop()
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
