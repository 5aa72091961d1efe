"""The agent's unix socket, which run_build talks to: one JSON object a line, each way.

    run_build → {"op": "start", "configuration", "number"?, "required_free"?, "agent"?}
    agent     → {"op": "progress", "message"}...  then {"op": "started", ...} or {"op": "error", "message"}
    run_build → {"op": "finish", "exit_code"}      agent → {"op": "finished", "status", "summary"}
    run_build → {"op": "resume", "build"}          (after the agent restarted) agent → {"op": "resumed"}
    report_push → {"op": "report_push", "token", "reference", "digest"?}
                                                   agent → {"op": "reported", ...} or {"op": "error", "message"}

run_build keeps its connection open while the command runs: when it ends without a finish
(run_build killed), the agent notices at once. The peer's process and user come from the
socket itself (SO_PEERCRED): a build can be resumed and finished only by the run_build that
started it, and its config belongs to that run_build's user.
"""

import grp
import json
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path

from .builds import BuildFailed, process_started

MAX_LINE = 64 * 1024


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        agent = self.server.agent
        pid, uid, _ = struct.unpack("3i", self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                  struct.calcsize("3i")))
        message = self._read()
        if message is None:
            return
        op = message.get("op")
        if op == "ping":
            self._send({"op": "pong", "agent": agent.settings.name})
            return
        if op == "report_push":
            self._send(agent.report_push(message))
            return
        if op == "start":
            build = self._start(agent, message, pid, uid)
        elif op == "resume":
            build = self._resume(agent, message, pid)
        else:
            self._send({"op": "error", "message": f"unknown request {op!r}"})
            return
        if build is None:
            return
        agent.attach(build.id)
        finished = False
        try:
            while not finished:
                message = self._read()
                if message is None:
                    break
                if message.get("op") == "finish":
                    exit_code = message.get("exit_code")
                    if not isinstance(exit_code, int) or not -2 ** 31 <= exit_code < 2 ** 31:
                        self._send({"op": "error", "message": "finish needs the command's exit code"})
                        continue
                    outcome = agent.finish_build(build, exit_code=exit_code)
                    finished = True
                    self._send({"op": "finished", **outcome})
        finally:
            if not finished and agent.book.get(build.id) is build:
                agent.client_gone(build)

    def _start(self, agent, message, pid, uid):
        if not isinstance(message.get("configuration"), str):
            self._send({"op": "error", "message": "start needs a configuration"})
            return None
        try:
            build, outcome = agent.start_build(message, pid, uid, progress=self._progress)
        except BuildFailed as exc:
            self._send({"op": "error", "message": str(exc)})
            return None
        self._send({"op": "started", **outcome})
        return build

    def _resume(self, agent, message, pid):
        build = agent.book.get(message.get("build"))
        if build is None or build.pid != pid or build.pid_started != process_started(pid):
            self._send({"op": "error", "message": f"no running build {message.get('build')} of this run_build on "
                                                  "this agent"})
            return None
        self._send({"op": "resumed", "build": build.id})
        return build

    def _progress(self, text: str) -> None:
        self._send({"op": "progress", "message": text})

    def _read(self) -> dict | None:
        try:
            line = self.rfile.readline(MAX_LINE)
        except OSError:
            return None
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None

    def _send(self, message: dict) -> None:
        try:
            self.wfile.write(json.dumps(message).encode() + b"\n")
            self.wfile.flush()
        except OSError:
            pass  # run_build is gone: the read that follows says so


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalServer:
    def __init__(self, agent, path: Path, group: str = ""):
        self.agent, self.path, self.group = agent, path, group
        self._server = None
        self._thread = None

    def start(self):
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # left by an agent that was killed
        old = os.umask(0o117)  # the socket is born 0660: no moment when others may connect
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        self._server.agent = self.agent
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="local-socket", daemon=True)
        self._thread.start()

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self.path.unlink(missing_ok=True)
