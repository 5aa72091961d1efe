"""The agent's one module that talks to its Docker daemon through the docker SDK."""

import base64
import hashlib
import json
import threading
import time
from urllib.parse import quote, quote_plus

import docker
from docker.errors import APIError, DockerException
from requests.exceptions import RequestException

from .events import rfc3339_nano

# A login the daemon verified on this agent in the last VERIFIED_FOR seconds is not verified again.
VERIFIED_FOR = 300


class DaemonError(Exception):
    """The daemon could not be reached or refused a request; the message quotes its answer."""


def client(docker_host: str = "", timeout: int = 60, version: str | None = None) -> docker.DockerClient:
    """A client for `docker_host`, or for DOCKER_HOST / Docker's default when empty.

    `version`: the API version already negotiated with this daemon (else the client asks it).
    """
    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=timeout, version=version)
        return docker.from_env(timeout=timeout, version=version)
    except DockerException as exc:
        raise DaemonError(f"the Docker daemon at {docker_host or 'DOCKER_HOST'} does not answer: {_short(exc)}") \
            from None


def _short(exc: Exception | str) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"


class Daemon:
    """The agent's daemon: its clock, its state, login verification (remembered for a few minutes)."""

    CALIBRATE_EVERY = 60  # seconds between two readings of the daemon's clock

    def __init__(self, docker_host: str, login_config: str = "", engine: str = "docker"):
        self.docker_host, self.engine = docker_host, engine
        self.api_version: str | None = None
        self._offset: int | None = None  # daemon clock minus this host's, in nanoseconds
        self._calibrated = 0.0
        # An empty Docker config for verifying logins: the agent's own (its credsStore, its auths)
        # has no say in whether a build's credentials work.
        self.login_config = login_config
        self._verified: dict[str, float] = {}
        self._lock = threading.Lock()
        self._client = None

    @property
    def api(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = client(self.docker_host, version=self.api_version)
                self.api_version = self._client.api.api_version
            return self._client

    def new_client(self) -> docker.DockerClient:
        """A client of its own (for a stream), without asking the daemon its API version again."""
        return client(self.docker_host, version=self.api_version)

    def ping(self) -> None:
        """Raises DaemonError unless the daemon answers."""
        self._call("ping", lambda: self.api.ping())

    def reset(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except APIError as exc:
            raise DaemonError(f"{what}: {_explanation(exc)}") from None
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DaemonError(f"the Docker daemon at {self.docker_host or 'DOCKER_HOST'} does not answer: "
                              f"{_short(exc)}") from None

    def state(self) -> tuple[bool, str, str]:
        """(answers, error, version) for the server's agent page."""
        try:
            version = self._call("version", lambda: self.api.version())
        except DaemonError as exc:
            return False, str(exc), ""
        podman = any(str(component.get("Name", "")).startswith("Podman")
                     for component in version.get("Components") or [] if isinstance(component, dict))
        number = str(version.get("Version", ""))
        if podman != (self.engine == "podman"):
            # Podman's events differ from Docker's (agent/events.py podman_event): read as the other's, they
            # would be recorded wrong.
            served, wanted = ("Podman", "podman") if podman else ("Docker", "docker")
            return False, (f"{self.docker_host or 'DOCKER_HOST'} is served by {served} {number}, but the agent runs "
                           f"with --engine {self.engine}: start it with --engine {wanted} (DOCKERSUPPORT_ENGINE)"), \
                f"{served} {number}".strip()
        return True, "", f"Podman {number}" if podman else number

    def now_nano(self) -> int:
        """The daemon's own clock, which its events are stamped with (not this host's).

        Read as this host's clock plus the daemon's offset, measured once a minute (`docker info`
        costs ~10 ms, too much for every build step). A daemon on this host (a unix socket) shares
        its clock, so an offset of a few milliseconds there is the measurement's own noise.
        """
        if self._offset is None or time.monotonic() - self._calibrated > self.CALIBRATE_EVERY:
            before = time.time_ns()
            info = self._call("info", lambda: self.api.info())
            after = time.time_ns()
            daemon = rfc3339_nano(info.get("SystemTime", "")) or after
            offset = daemon - (before + after) // 2
            local = self.docker_host.startswith("unix://") or not self.docker_host
            self._offset = 0 if local and abs(offset) < 1_000_000_000 else offset
            self._calibrated = time.monotonic()
        return time.time_ns() + self._offset

    def verify_login(self, server: str, username: str, password: str) -> str:
        """Has the daemon check the credentials with the registry (its /auth endpoint).

        docker-py keeps credentials only in this client's memory and writes no file; reauth=True makes
        the daemon ask the registry (ECR's username is always AWS: a cached entry for it would answer
        without asking). A login verified in the last VERIFIED_FOR seconds is taken as good.
        """
        key = hashlib.sha256(f"{server}\0{username}\0{password}".encode()).hexdigest()
        with self._lock:
            if self._verified.get(key, 0) > time.monotonic() - VERIFIED_FOR:
                return "verified recently"
        try:
            answer = self.api.login(username=username, password=password, registry=server, reauth=True,
                                    dockercfg_path=self.login_config or None)
        except APIError as exc:
            # Redacted whole, then cut: a cut through the password would leave part of it.
            raise DaemonError(_short(secret_redact(_explanation(exc, whole=True), username, password))) from None
        except (DockerException, RequestException, OSError) as exc:
            self.reset()
            raise DaemonError("the Docker daemon could not be asked: "
                              + _short(secret_redact(str(exc), username, password))) from None
        with self._lock:
            self._verified[key] = time.monotonic()
        return (answer or {}).get("Status", "Login Succeeded")


def secret_redact(text: str, username: str, password: str) -> str:
    """`text` without the password in any form a registry (which may repeat what it was sent) or the
    daemon (which quotes the registry's answer) may give it back: as is, JSON- or Go-quoted,
    URL-encoded, and as the Basic credentials the daemon sent (base64 of username:password)."""
    if not password:
        return text
    basic = f"{username}:{password}".encode()
    forms = {password, json.dumps(password)[1:-1], json.dumps(password, ensure_ascii=False)[1:-1],
             quote(password, safe=""), quote_plus(password, safe=""), base64.b64encode(password.encode()).decode()}
    for encoded in (base64.b64encode(basic).decode(), base64.urlsafe_b64encode(basic).decode()):
        forms |= {encoded, encoded.rstrip("=")}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def _explanation(exc: APIError, whole: bool = False) -> str:
    explanation = exc.explanation or str(exc)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation) if whole else _short(str(explanation))
