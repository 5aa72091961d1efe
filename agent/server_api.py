"""The agent's channel to the server: HTTP(S) requests to /api/v1/agent/, with its own token.

Answers the agent cannot get past (a revoked token, another protocol version) raise Unrecoverable
and stop the agent; an unreachable or failing server raises ServerUnavailable, which callers retry
with backoff (`retrying`). A private CA file verifies a server with a certificate of its own.
"""

import random
import threading
import time

import requests

from . import protocol
from .protocol import from_json, to_json

TIMEOUT = (10, 60)


class ServerError(Exception):
    """The server refused a request; the message quotes it."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class Unrecoverable(ServerError):
    """The agent cannot go on: revoked token, protocol mismatch."""


class ServerUnavailable(ServerError):
    """Not reached, or a 5xx: try again later."""


class ServerUnreachable(ServerUnavailable):
    """No connection could be made: the request never reached the server (safe to send again)."""


class BearerToken(requests.auth.AuthBase):
    """The token as auth, not as a bare header: requests then never puts a ~/.netrc password in its place."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class ServerAPI:
    def __init__(self, url: str, token: str, ca_file: str = ""):
        self.url = url.rstrip("/") + "/api/v1/agent"
        self._token = token
        self.verify = ca_file or True
        self._local = threading.local()  # a session per thread: requests' sessions are not thread-safe

    @property
    def http(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update({"User-Agent": "dockersupport-agent",
                                    protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION)})
            session.verify = self.verify
            session.trust_env = True
        return session

    def request(self, method: str, path: str, message=None, *, token: str | None = None, answer=None,
                timeout=TIMEOUT, params=None):
        try:
            response = self.http.request(method, self.url + path, json=to_json(message) if message else None,
                                         auth=BearerToken(token or self._token), timeout=timeout, params=params,
                                         allow_redirects=False)
        except requests.exceptions.ConnectionError as exc:
            # A connection refused or timed out before anything was sent is safe to send again.
            unsent = isinstance(exc, requests.exceptions.ConnectTimeout) or "NewConnectionError" in repr(exc)
            error = ServerUnreachable if unsent else ServerUnavailable
            raise error(f"the server at {self.url} cannot be reached: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise ServerUnavailable(f"the server at {self.url} cannot be reached: {_reason(exc)}") from None
        if response.status_code in (401, 426) and token is None:
            raise Unrecoverable(f"the server refused this agent: {_detail(response)}", response.status_code)
        if response.status_code >= 500 or response.status_code == 429:
            raise ServerUnavailable(f"the server answered {_detail(response)}", response.status_code)
        if response.is_redirect:
            raise ServerError(f"the server redirects to {response.headers.get('Location', '?')}: give --server the "
                              "URL it redirects to (https)", response.status_code)
        if response.status_code >= 300:
            raise ServerError(_detail(response), response.status_code)
        if answer is None:
            return response.json() if response.content else None
        return from_json(answer, response.json())

    # The protocol's requests -----------------------------------------------------------------------
    def connect(self, hello: protocol.ConnectRequest) -> protocol.AgentSettings:
        return self.request("POST", "/connect/", hello, answer=protocol.AgentSettings)

    def heartbeat(self, beat: protocol.HeartbeatRequest) -> protocol.HeartbeatAnswer:
        return self.request("POST", "/heartbeat/", beat, answer=protocol.HeartbeatAnswer)

    def jobs(self, wait: int, session: int) -> list[protocol.Job]:
        answer = self.request("GET", "/jobs/", params={"wait": wait, "session": session}, answer=protocol.JobList,
                              timeout=(10, wait + 30))
        return answer.jobs

    def job_done(self, job_id: int, result: protocol.JobResult) -> None:
        self.request("POST", f"/jobs/{job_id}/", result)

    def build_start(self, start: protocol.BuildStartRequest) -> protocol.BuildStarted:
        return self.request("POST", "/builds/", start, answer=protocol.BuildStarted)

    def credentials(self, build_id: int, token: str) -> protocol.Credentials:
        return self.request("GET", f"/builds/{build_id}/credentials/", token=token, answer=protocol.Credentials)

    def logins(self, build_id: int, token: str, report: protocol.LoginReport) -> None:
        self.request("POST", f"/builds/{build_id}/logins/", report, token=token)

    def finish(self, build_id: int, token: str, finish: protocol.FinishRequest) -> protocol.FinishAnswer:
        return self.request("POST", f"/builds/{build_id}/finish/", finish, token=token,
                            answer=protocol.FinishAnswer, timeout=(10, 120))

    def report_push(self, report: protocol.PushReport) -> protocol.PushRecorded:
        return self.request("POST", "/pushes/", report, answer=protocol.PushRecorded)

    def events(self, batch: protocol.EventBatch) -> protocol.EventAck:
        return self.request("POST", "/events/", batch, answer=protocol.EventAck)

    def tracked_images(self) -> list[protocol.TrackedImage]:
        return self.request("GET", "/images/", answer=protocol.TrackedImages).images

    def cleanup(self, report: protocol.CleanupReport) -> None:
        self.request("POST", "/cleanups/", report)


def retrying(call, *, stopped: threading.Event | None = None, give_up_after: float | None = None,
             say=None, only=ServerUnavailable):
    """call() until the server answers; ServerUnavailable is retried with backoff and jitter.

    Backoff doubles from 0.5 s up to 30 s, with up to 50% random jitter so that many agents
    coming back after a server outage do not all ask at once.
    """
    delay, started = 0.5, time.monotonic()
    while True:
        try:
            return call()
        except only as exc:
            if give_up_after is not None and time.monotonic() - started > give_up_after:
                raise
            if say is not None:
                say(f"{exc}; trying again in {delay:.0f} s")
            pause = delay * (1 + random.random() / 2)
            if stopped is not None:
                if stopped.wait(pause):
                    raise
            else:
                time.sleep(pause)
            delay = min(delay * 2, 30)


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and "detail" in body:
        text = str(body["detail"])
    elif isinstance(body, dict):
        text = "; ".join(f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
                         for key, value in body.items())
    else:
        text = str(body)
    return f"HTTP {response.status_code}: {text[:1000]}"


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"
