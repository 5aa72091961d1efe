"""The builds an agent runs now, kept on disk so that a restarted agent finds them again.

Each running build is a small JSON file (0600: it holds the build's token) in the agent's folder.
A restarted agent adopts the builds whose run_build still lives (it reconnects) and erases the
configs of the others, reporting them lost.
"""

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path


class BuildFailed(Exception):
    """A build could not start (or its command must not run); the message is for the person running it."""


@dataclass
class RunningBuild:
    id: int
    number: int
    configuration: str
    project: str
    token: str = field(repr=False)
    started_by: str = "run_build"  # or "api"
    docker_config: str = ""
    window_start: int = 0  # daemon time just before the command started
    pid: int = 0  # run_build's process (run_build builds)
    pid_started: str = ""  # its start time, so that a reused pid is not taken for it
    uid: int | None = None  # the user the build's config belongs to
    servers: list[str] = field(default_factory=list)  # registries it is logged in to
    expires_at: str = ""  # ISO time of its first expiring token (ECR), refreshed before then
    finishing: dict | None = None  # a finish the server has not taken yet: tried again
    login_report: dict | None = None  # its login report (JSON) until the server has it
    exact: bool = True  # its configuration gives it its own Docker endpoint (exact attribution)
    attribution: str = ""  # "exact" (its endpoint runs) or "time"
    endpoint_pid: int = 0  # its endpoint's process (agent.endpoints), and that process's start time
    endpoint_started: str = ""
    journal: str = ""  # its endpoint's journal (agent.attribution)
    journal_closed: bool = False  # its endpoint was stopped for its finish: never started again

    def label(self) -> str:
        return f"{self.configuration} #{self.number}"


class BuildBook:
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self._builds: dict[int, RunningBuild] = {}
        self._lock = threading.Lock()
        for path in directory.glob("*.json"):
            try:
                build = RunningBuild(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            self._builds[build.id] = build

    def add(self, build: RunningBuild) -> None:
        with self._lock:
            self._builds[build.id] = build
            self._save(build)

    def save(self, build: RunningBuild) -> None:
        with self._lock:
            if build.id in self._builds:
                self._save(build)

    def _save(self, build: RunningBuild) -> None:
        path = self.directory / f"{build.id}.json"
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(build), handle)
        os.replace(temporary, path)

    def remove(self, build_id: int) -> RunningBuild | None:
        with self._lock:
            build = self._builds.pop(build_id, None)
            (self.directory / f"{build_id}.json").unlink(missing_ok=True)
            return build

    def get(self, build_id: int) -> RunningBuild | None:
        with self._lock:
            return self._builds.get(build_id)

    def all(self) -> list[RunningBuild]:
        with self._lock:
            return list(self._builds.values())


def process_started(pid: int) -> str:
    """The start time of a process (Linux /proc), or '' when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # Field 22, after the command name in parentheses (which may itself hold spaces).
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_alive(pid: int, started: str) -> bool:
    """The process of that pid and start time runs (a zombie, ended but not yet waited for, does not)."""
    return bool(pid) and started != "" and process_started(pid) == started and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False
