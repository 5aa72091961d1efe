"""The messages agents and the server exchange, defined once for both sides.

The server validates requests and documents them in its OpenAPI schema from these dataclasses
(djangorestframework-dataclasses); the agent builds requests and reads answers with `to_json`
and `from_json`. Every agent request carries PROTOCOL_HEADER; a server that does not speak the
agent's version refuses it with HTTP 426 and says which version it speaks.

Nothing here may import more than the standard library: it is the agent's and the server's alike.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Dockersupport-Protocol"
# Token kinds are told apart by their prefix (and secret scanners can find them in leaked text).
AGENT_TOKEN_PREFIX = "dsa_"
BUILD_TOKEN_PREFIX = "dsb_"
# A build command's own token (DOCKERSUPPORT_BUILD_TOKEN): it reports that build's pushes (report_push), nothing else.
REPORT_TOKEN_PREFIX = "dsr_"

MAX_SIZE = 2 ** 60  # bytes: no disk is larger (1048576T)
EVENT_BATCH_SIZE = 500  # records an agent sends at once (the server takes up to twice as many)


class JobKind:
    LOGIN = "login"  # an API-driven build starts: log it in on this agent
    LOGOUT = "logout"  # an API-driven build finishes (or was abandoned): log it out
    FREE_DISK_SPACE = "free_disk_space"  # `free_disk_space --agent` on the server

    ALL = (LOGIN, LOGOUT, FREE_DISK_SPACE)


class ProtocolError(ValueError):
    """A message does not have the shape its dataclass says."""


# --- Agent ---------------------------------------------------------------------------------------

@dataclass
class DaemonState:
    ok: bool
    error: str = ""
    version: str = ""
    docker_host: str = ""


@dataclass
class ConnectRequest:
    """The agent introduces itself when it starts."""

    agent_version: str
    hostname: str
    os: str
    daemon: DaemonState
    data_path: str = ""


@dataclass
class CleanupSettings:
    """How Free Disk Space treats the agent's images (agent/cleanup.py); set per agent in the admin."""

    keep_patterns: list[str] = field(default_factory=list)  # regexes: an image with a reference they search stays
    min_image_age: int = 600  # seconds: images created or last used by a build more recently stay
    keep_free_bytes: int | None = None  # the agent frees space by itself when less is free (None: only when asked)


@dataclass
class AgentSettings:
    """What the server tells a connecting agent."""

    name: str
    heartbeat_interval: int
    job_wait: int  # seconds a jobs request may wait for work
    shared: bool  # serves every project
    projects: list[str]
    docker_data_path: str = ""  # set in the admin; empty: the agent's own setting or the OS default
    docker_host: str = ""  # set in the admin; the agent's own DOCKER_HOST wins
    session: int = 0  # this run of the agent: its job polls name it
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)


@dataclass
class HeartbeatRequest:
    daemon: DaemonState
    running_builds: list[int]
    free_bytes: int | None = None


@dataclass
class HeartbeatAnswer:
    ended_builds: list[int]  # of those the agent called running, the ones the server has closed
    cleanup: CleanupSettings | None = None  # the agent's clean-up settings now (an admin may have changed them)


# --- Builds --------------------------------------------------------------------------------------

@dataclass
class BuildInfo:
    id: int
    number: int
    configuration: str
    project: str


@dataclass
class RegistryLogin:
    """One registry login of a build. Only for a running build of the agent asking, while it runs."""

    connection: str  # project/connection
    registry: str  # host[:port] that images of the registry are named with
    server: str  # the key of `auths` in config.json
    username: str = ""
    password: str = field(default="", repr=False)
    optional: bool = False
    expires_at: datetime | None = None
    error: str = ""  # the server could not obtain the credentials (AWS refused, ...): a failed login


@dataclass
class BuildStartRequest:
    """run_build asks its agent to start a build; the agent asks the server."""

    configuration: str
    number: int | None = None


@dataclass
class BuildStarted:
    build: BuildInfo
    token: str  # the build's own token: its later requests, and nothing else
    logins: list[RegistryLogin]
    # The configuration's setting: give the build its own Docker endpoint (a proxy socket, DOCKER_HOST), so that
    # its operations are known from its requests. An older server sends none: exact, the default.
    exact_attribution: bool = True
    # The token run_build gives the build's command (DOCKERSUPPORT_BUILD_TOKEN) for report_push; the agent keeps it
    # nowhere. An older server sends none: the command gets none.
    report_token: str = field(default="", repr=False)


@dataclass
class Credentials:
    logins: list[RegistryLogin]
    exact_attribution: bool = True  # as in BuildStarted (an API-driven build's agent learns it here)


@dataclass
class LoginReport:
    docker_config: str
    logged_in: list[str]  # "project/connection → host", for people
    registries: list[str]  # the registry hosts the build is logged in to
    warnings: list[str]
    error: str = ""  # a required login failed: the command does not run
    expires_at: datetime | None = None  # when the first expiring token (ECR) of the build expires
    docker_host: str = ""  # the build's DOCKER_HOST: its own endpoint (unix://...), or the daemon's
    attribution: str = ""  # "exact" (its own endpoint) or "time" (by time, as before); "": an older agent
    attribution_note: str = ""  # why it is time-based (the configuration turned it off, the proxy did not start...)


@dataclass
class FinishRequest:
    exit_code: int | None = None
    lost: str = ""  # the build ended without its command's exit code, and why
    events_through: int = 0  # the agent's event sequence number up to which the build's events were sent
    logins: LoginReport | None = None  # the login report, when the build ended before it was sent


@dataclass
class FinishAnswer:
    status: str
    summary: dict  # the Docker Info summary (see the API's DockerInfoSummary)


@dataclass
class PushReport:
    """A push the build's command reports (report_push: one its Docker daemon never saw), relayed by the agent."""

    token: str = field(repr=False)  # the build's report token (DOCKERSUPPORT_BUILD_TOKEN): it names the build
    reference: str
    digest: str = ""  # the digest the command pushed, when it knows it; else the registry's for the tag


@dataclass
class PushRecorded:
    """What the server recorded of a reported push, once its registry was seen holding it."""

    build: int
    build_label: str  # "configuration #number"
    registry: str
    repository: str
    tag: str
    digest: str
    connection: str  # the build's login connection the registry was read with
    verified_at: datetime
    recorded_before: bool = False  # the build had this push already (reported twice, or seen by the daemon)


# --- Events --------------------------------------------------------------------------------------

@dataclass
class EventBatch:
    """Docker operations read from the agent's daemon, in its sequence; each record names its builds."""

    first_seq: int
    last_seq: int
    records: list[dict]


@dataclass
class EventAck:
    acked: int  # the last sequence number the server holds


# --- Jobs ----------------------------------------------------------------------------------------

@dataclass
class Job:
    id: int
    kind: str
    build: BuildInfo | None = None
    token: str = ""  # login: the build's token
    exit_code: int | None = None  # logout
    lost: str = ""  # logout of an abandoned build: why
    required_bytes: int | None = None  # free_disk_space
    dry_run: bool = False
    reason: str = ""


@dataclass
class JobList:
    jobs: list[Job]


@dataclass
class JobResult:
    ok: bool
    error: str = ""
    result: dict = field(default_factory=dict)


# --- Free Disk Space -----------------------------------------------------------------------------

@dataclass
class TrackedImage:
    reference: str  # repository:tag, or the image ID
    last_used_at: datetime


@dataclass
class TrackedImages:
    images: list[TrackedImage]


@dataclass
class CleanupReport:
    reason: str
    data_path: str
    required_bytes: int
    free_before: int
    free_after: int
    removed: list[dict]  # {"image", "references", "size", "freed", "reason"}; BuildKit's cache: "kind": "build cache"
    met: bool
    kept: list[dict] = field(default_factory=list)  # {"image", "references", "size", "reason"}: what stayed, and why


# --- Encoding --------------------------------------------------------------------------------------

def to_json(message) -> dict:
    """A dataclass as JSON-ready data (datetimes as ISO 8601)."""
    return _encode(dataclasses.asdict(message))


def _encode(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def from_json(cls, data, path: str = ""):
    """Builds `cls` from decoded JSON; unknown keys are ignored (a newer peer may send more).

    Raises ProtocolError naming the path of what is missing or of the wrong type.
    """
    if not isinstance(data, dict):
        raise ProtocolError(f"{path or cls.__name__}: expected an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        where = f"{path}.{item.name}" if path else item.name
        if item.name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing")
            continue
        values[item.name] = _decode(hints[item.name], data[item.name], where)
    return cls(**values)


def _decode(kind, value, where):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return from_json(kind, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        return [_decode(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if kind is datetime:
        try:
            return datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise ProtocolError(f"{where}: expected a date and time (ISO 8601)") from None
    expected = {dict: dict, str: str, bool: bool, int: int}.get(origin or kind)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ProtocolError(f"{where}: expected {expected.__name__}")
    return value
