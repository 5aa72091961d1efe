"""A build's own Docker endpoint: the proxy process (agent.docker_proxy) the agent starts for it.

The process listens on `docker.sock` in the build's directory (its DOCKER_CONFIG directory, so it
goes with the build's credentials) and writes its journal in the agent's own folder, where the
build cannot write. It runs in a session of its own: when the agent restarts, it goes on, and the
build's Docker connections with it; the next agent reads its journal again and stops it at the
build's finish.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .builds import process_alive, process_started

SOCKET_NAME = "docker.sock"
UNIX_PATH_MAX = 107  # bytes of a unix socket's path (Linux's sun_path, less its NUL)
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where `python -m agent.docker_proxy` is found
START_TIMEOUT = 15
STOP_TIMEOUT = 10


class EndpointError(Exception):
    """The build's endpoint could not be given; the message says why (the build falls back to time)."""


def daemon_socket(docker_host: str) -> str:
    """The path of the daemon's unix socket; EndpointError when it is not a unix socket (tcp://, ssh://)."""
    host = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        raise EndpointError(f"the agent's Docker daemon is at {host}: a build's own endpoint forwards to a unix "
                            "socket only")
    return host.removeprefix("unix://")


def socket_path(directory: str | Path) -> str:
    return os.path.join(str(directory), SOCKET_NAME)


def start(*, directory: str | Path, daemon_path: str, journal: str | Path, log: str | Path,
          owner: int | None = None) -> subprocess.Popen:
    """Starts the endpoint of a build and returns once it listens; EndpointError if it does not."""
    listen = socket_path(directory)
    if len(os.fsencode(listen)) > UNIX_PATH_MAX:
        raise EndpointError(f"its socket path {listen} is longer than the {UNIX_PATH_MAX} bytes a unix socket may "
                            "have (set DOCKERSUPPORT_AGENT_DIR to a shorter folder)")
    offset = _size(journal)
    command = [sys.executable, "-m", "agent.docker_proxy", "--listen", listen, "--daemon", daemon_path,
               "--journal", str(journal)]
    if owner is not None:
        command += ["--owner", str(owner)]
    with open(log, "ab") as errors:
        # Nothing of the agent's environment but what Python needs: the endpoint needs no setting.
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=errors, start_new_session=True, close_fds=True,
                                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _listening(journal, offset, process.pid):
            return process
        if process.poll() is not None:
            raise EndpointError(f"its proxy process ended at once (exit code {process.returncode}): "
                                f"{_tail(log) or 'no message'}")
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise EndpointError(f"its proxy process did not listen within {START_TIMEOUT} s: {_tail(log) or 'no message'}")


def stop(pid: int, started: str, process: subprocess.Popen | None = None) -> None:
    """Stops an endpoint (its connections closed, its socket removed); killed if it does not stop in time."""
    if not process_alive(pid, started):
        if process is not None:
            process.wait()
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not process_alive(pid, started):
            return
        time.sleep(0.02)
    if process_alive(pid, started):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


def identity(process: subprocess.Popen) -> tuple[int, str]:
    """(pid, start time): what finds the process again, and never another one that got its pid."""
    return process.pid, process_started(process.pid)


def _listening(journal, offset: int, pid: int) -> bool:
    try:
        with open(journal, "rb") as handle:
            handle.seek(offset)
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        try:
            fact = json.loads(line)
        except ValueError:
            continue
        if isinstance(fact, dict) and fact.get("kind") == "listening" and fact.get("pid") == pid:
            return True
    return False


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path, limit: int = 500) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, _size(path) - limit))
            return handle.read().decode(errors="replace").strip().splitlines()[-1][:limit]
    except (OSError, IndexError):
        return ""
