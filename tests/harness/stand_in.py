"""A scripted HTTP listener that records every request it receives: a hostile registry, token
service or redirect target for the tests of what the server sends where.

Each listener binds its own loopback address (127.0.0.2, 127.0.0.3, ...: Linux routes all of
127.0.0.0/8 to lo), so tests can tell "the registry's host" from "another host" without DNS.
"""

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes = b""


class StandIn:
    """`StandIn("127.0.0.2", script)`: `script(recorded) -> Answer` decides each answer.

    `.requests` holds every request received, `.address` is `host:port`, `.url` is `http://host:port`.
    """

    def __init__(self, host: str, script):
        self.script = script
        self.requests: list[Recorded] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, self.path, dict(self.headers.items()), body)
                stand_in.requests.append(recorded)
                answer = stand_in.script(recorded)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_HEAD = do_POST = do_DELETE = do_PUT = _answer

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def authorizations(self) -> list[str]:
        """The Authorization headers it received, in order."""
        return [r.headers["Authorization"] for r in self.requests if "Authorization" in r.headers]

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ScriptedService:
    """A stand-in service answered by its own `_answer` script: its StandIn's address and requests, and a
    context manager that starts and stops it. Subclasses set `self.stand_in = StandIn(host, self._answer)`."""

    stand_in: StandIn

    @property
    def address(self) -> str:
        return self.stand_in.address

    @property
    def url(self) -> str:
        return self.stand_in.url

    @property
    def requests(self):
        return self.stand_in.requests

    def __enter__(self):
        self.stand_in.start()
        return self

    def __exit__(self, *exc):
        self.stand_in.stop()
