"""Which build asked for a Docker event: exact attribution from each build's own Docker endpoint (issue 16).

The daemon's event stream does not say which client caused an event. A build with exact attribution
talks to the daemon only through its own endpoint (agent.docker_proxy), whose journal says what the
build asked for: each request as it began and ended, the containers created for it (create's answer,
a classic build's "Running in" lines), the digests its pushes reported. An event goes to the builds
whose requests name its object:

- a container event to the build that created the container (its id, for good: follow-on events
  like an auto-removed container's die and destroy, or a detached container's end, come with no
  request), and to any build whose request in flight named the container (by id, prefix or name:
  `docker exec`, `docker rm -f` of another's container);
- a pull, push or tag event to the builds whose request in flight named that repository and tag
  (`docker pull`, `docker push`, `docker tag`, `docker build -t`, `docker commit`, an import);
- events whose object no request names (the image ID an `rmi` untags and deletes, what `docker load`
  tags, a quiet classic build's intermediate containers) to the builds with a request in flight of
  the one kind that causes them. Never a push: a push is attributed only to a build that asked to
  push that repository and tag.

The podman CLI's requests (Podman's libpod API, /libpod/...) are read as the Docker requests they match:
their paths are Docker's after /libpod, but a pull (`reference`), a push (`destination`) and a removal of
several images (`/images/remove`, whose answer names what it deleted).

An event is waited for (GRACE) while a build's journal may not yet hold what claims it (the daemon
reports a created container before its answer gives the client the id). An event no build with its
own endpoint claims goes, by time as before, to the builds without one (opted out) running then,
marked owner-uncertain when other builds ran too; and when there are none, it is unattributed:
recorded on the agent, never guessed.
"""

import collections
import json
import os
import re
import threading
from dataclasses import dataclass, field

from .references import registry_and_repository, split_reference

GRACE = 2.0  # seconds an unclaimed event waits for the journals to catch up
SLACK = 1_000_000_000  # ns: a request counts as in flight this long after its end (clock and order noise)
KEEP_ENDED = 120 * 1_000_000_000  # ns: requests ended this long before the events read are forgotten
MAX_ENDED = 50_000  # ended requests kept per build at most
READ_LIMIT = 8 * 1024 * 1024  # bytes of a journal read at once
_HEX = re.compile(r"^[0-9a-f]{12,64}$")
_CONTAINER_PATH = re.compile(r"^/containers/([^/]+)(?:/([a-z_]+))?$")
_IMAGE_PATH = re.compile(r"^/images/(.+?)(?:/(push|tag|get|history|json))?$")
_EXEC_START = re.compile(r"^/exec/([^/]+)/start$")
_LIBPOD = "/libpod/"

# The requests that cause a container's event, when the container is not the build's own.
_CONTAINER_CAUSES = {
    "create": {"container-create", "build"},
    "start": {"container-start", "container-restart", "build"},
    "die": {"container-kill", "container-stop", "container-restart", "container-delete", "build"},
    "destroy": {"container-delete", "build"},
    "exec": {"container-exec", "exec-start"},
}
# Events whose object no request names, and the requests that cause them: (method, path kind).
_CAUSES = {
    ("image", "untag"): {"image-delete", "image-prune", "load", "image-untag"},
    ("image", "delete"): {"image-delete", "image-prune", "build"},
    ("image", "load"): {"load"},
    ("image", "import"): {"import"},
    ("image", "tag"): {"load"},
    ("container", "create"): {"build"},
    ("container", "start"): {"build"},
    ("container", "die"): {"build"},
    ("container", "destroy"): {"build", "container-prune"},
}


def _key(name: str, tag: str) -> tuple[str, str, str]:
    """An image reference as (registry, repository, tag), however Docker spells the name."""
    registry, repository = registry_and_repository(name)
    return registry, repository, tag or "latest"


@dataclass
class _Request:
    """One request of a build's endpoint: when it was in flight, what kind it is, what it names."""

    begin: int
    kind: str = ""
    references: set = field(default_factory=set)  # (registry, repository, tag or digest); tag "*": all
    containers: set = field(default_factory=set)  # container ids, prefixes or names the request names
    image_ids: set = field(default_factory=set)  # image IDs its answer named (deleted)
    end: int | None = None
    pushed: dict = field(default_factory=dict)  # tag -> digest the push reported


def _first(query: dict, name: str) -> str:
    values = query.get(name) if isinstance(query, dict) else None
    return values[0] if isinstance(values, list) and values and isinstance(values[0], str) else ""


def _docker_path(path: str) -> str:
    """A path of Podman's libpod API (the podman CLI's) as Docker's API spells the same request: their paths
    are Docker's after /libpod, but for pull, import and the removal of several images."""
    return path[len(_LIBPOD) - 1:] if path.startswith(_LIBPOD) else path


def _describe_libpod(method: str, path: str, query: dict) -> _Request | None:
    """The libpod requests whose path or query differs from Docker's (None: described as Docker's)."""
    request = _Request(begin=0)
    if method == "POST" and path in ("/images/pull", "/images/import"):
        request.kind = "pull" if path == "/images/pull" else "import"
        name, tag, digest = split_reference(_first(query, "reference").removeprefix("docker://"))
        if name:
            request.references.add((*registry_and_repository(name), digest) if digest else _key(name, tag))
        return request
    if method == "DELETE" and path == "/images/remove":  # the answer names what it deleted
        request.kind = "image-delete"
        return request
    if method == "POST" and path.startswith("/images/") and path.endswith("/push"):
        request.kind = "push"
        name, tag, _ = split_reference(_first(query, "destination").removeprefix("docker://")
                                       or path[len("/images/"):-len("/push")])
        request.references.add((*registry_and_repository(name), tag or "latest"))
        return request
    if method == "POST" and path.startswith("/images/") and path.endswith("/untag"):
        request.kind = "image-untag"
        return request
    return None


def _describe(method: str, path: str, query: dict) -> _Request:
    """What a request names and causes, from its method, path and query alone."""
    if path.startswith(_LIBPOD):
        path = _docker_path(path)
        described = _describe_libpod(method, path, query)
        if described is not None:
            return described
    request = _Request(begin=0)
    if method == "POST" and path == "/images/create":
        source, image, tag = _first(query, "fromSrc"), _first(query, "fromImage"), _first(query, "tag")
        if source:
            request.kind = "import"
            name, own_tag, _ = split_reference(_first(query, "repo"))
            if name:  # `repo` may hold its tag
                request.references.add(_key(name, tag or own_tag))
        elif image:
            request.kind = "pull"
            name, own_tag, digest = split_reference(image)
            if tag.startswith("sha256:") or digest:
                request.references.add((*registry_and_repository(name), tag if tag.startswith("sha256:") else digest))
            else:
                request.references.add(_key(name, tag or own_tag))
        return request
    if method == "POST" and path == "/build":
        request.kind = "build"
        for reference in (query.get("t") or []) if isinstance(query, dict) else []:
            if isinstance(reference, str) and reference:
                name, tag, _ = split_reference(reference)
                request.references.add(_key(name, tag))
        return request
    if method == "POST" and path == "/commit":
        request.kind = "commit"
        repository = _first(query, "repo")
        if repository:
            request.references.add(_key(repository, _first(query, "tag")))
        container = _first(query, "container")
        if container:
            request.containers.add(container)
        return request
    if method == "POST" and path == "/images/load":
        request.kind = "load"
        return request
    if method == "POST" and path == "/images/prune":
        request.kind = "image-prune"
        return request
    if method == "POST" and path == "/containers/prune":
        request.kind = "container-prune"
        return request
    if method == "POST" and path == "/containers/create":
        request.kind = "container-create"
        name = _first(query, "name").lstrip("/")
        if name:
            request.containers.add(name)
        return request
    match = _CONTAINER_PATH.match(path)
    if match and match.group(1) not in ("create", "json", "prune"):
        request.kind = f"container-{match.group(2) or method.lower()}"
        request.containers.add(match.group(1).lstrip("/"))
        return request
    match = _IMAGE_PATH.match(path)
    if match and path not in ("/images/json", "/images/search", "/images/get"):
        name, action = match.group(1), match.group(2)
        if method == "DELETE" and action is None:
            request.kind = "image-delete"
        elif method == "POST" and action == "push":
            request.kind = "push"
            tag = _first(query, "tag")
            base, own_tag, _ = split_reference(name)
            request.references.add((*registry_and_repository(base), tag or own_tag or "*"))
        elif method == "POST" and action == "tag":
            request.kind = "tag"
            repository = _first(query, "repo")
            if repository:
                request.references.add(_key(repository, _first(query, "tag")))
        return request
    match = _EXEC_START.match(path)
    if match and method == "POST":
        request.kind = "exec-start"
        request.containers.add("exec:" + match.group(1))  # replaced by the exec's container when known
    return request


class Claims:
    """What one build asked of the daemon, from its endpoint's journal facts.

    Requests are indexed by what they name (container names, ids and prefixes; image references; image
    IDs), so that deciding an event costs the same whatever the number of requests kept.
    """

    def __init__(self):
        self.containers: set[str] = set()  # ids (whole, or a build's 12-hex prefixes) of the containers it created
        # Requests not ended yet, by number; and those ended, in the order they ended (facts come in time
        # order): forgotten from the oldest.
        self.open: dict[int, _Request] = {}
        self.ended: collections.deque[_Request] = collections.deque()
        self._named: dict[object, list[_Request]] = collections.defaultdict(list)  # what a request names -> it
        self._prefixes: list[tuple[str, _Request]] = []  # other hex prefixes a request named a container by
        self.execs: dict[str, str] = {}  # exec id -> the container reference it was created on
        self.listening = False
        self.stopped = False
        self.behind = False  # its journal holds more than was read yet

    def add(self, fact: dict) -> None:
        kind, number = fact.get("kind"), fact.get("request")
        nano = fact.get("time_nano") if isinstance(fact.get("time_nano"), int) else 0
        if kind in ("listening", "stopped"):
            # A (re)started endpoint process: what its dead predecessor had in flight ended with it.
            self.listening = self.listening or kind == "listening"
            self.stopped = kind == "stopped"
            for request in self.open.values():
                request.end = nano
                self.ended.append(request)
            self.open.clear()
            self._forget_excess()
        elif kind == "request" and isinstance(number, int):
            method, path = str(fact.get("method") or ""), str(fact.get("path") or "")
            request = _describe(method, path, fact.get("query") or {})
            request.begin = nano
            if request.kind == "exec-start":
                exec_id = _docker_path(path).split("/")[2]
                request.containers = {self.execs[exec_id]} if exec_id in self.execs else set()
            self.open[number] = request
            for name in request.containers:
                self._name_container(name, request)
            for key in request.references:
                self._named[key].append(request)
        elif number in self.open:
            request = self.open[number]
            if kind == "response":
                container, exec_id = fact.get("container"), fact.get("exec")
                if isinstance(container, str) and _HEX.match(container):
                    self.containers.add(container)
                    request.containers.add(container)
                    self._name_container(container, request)
                if isinstance(exec_id, str) and exec_id and request.containers:
                    self.execs[exec_id] = next(iter(request.containers))
                for image_id in fact.get("deleted") or ():
                    if isinstance(image_id, str):
                        # libpod's answer names an image ID without the sha256: its events have (podman_event)
                        image_id = f"sha256:{image_id}" if _HEX.match(image_id) else image_id
                        request.image_ids.add(image_id)
                        self._named[("image", image_id)].append(request)
            elif kind == "container":
                # A classic build's "Running in <id>": only for as long as that build runs (its intermediate
                # containers live and die within it), since a RUN step's output can print the same line.
                container = fact.get("container")
                if isinstance(container, str) and _HEX.match(container):
                    request.containers.add(container)
                    self._name_container(container, request)
            elif kind == "pushed":
                tag, digest = fact.get("tag"), fact.get("digest")
                if isinstance(tag, str) and isinstance(digest, str):
                    request.pushed[tag] = digest
            elif kind == "end":
                request.end = nano
                self.ended.append(self.open.pop(number))
                self._forget_excess()

    def _name_container(self, name: str, request: _Request) -> None:
        if _HEX.match(name) and len(name) not in (12, 64):
            self._prefixes.append((name, request))
        else:
            self._named[("container", name)].append(request)

    def forget_before(self, nano: int) -> None:
        """Drops requests ended long before `nano`: no event of theirs is still to come."""
        forgotten = set()
        while self.ended and self.ended[0].end < nano - KEEP_ENDED:
            forgotten.add(id(self.ended.popleft()))
        self._unindex(forgotten)

    def _forget_excess(self) -> None:
        """At most MAX_ENDED ended requests are kept: a build flooding its endpoint with requests costs the
        agent bounded memory (its oldest requests claim nothing any more)."""
        if len(self.ended) > MAX_ENDED + MAX_ENDED // 10:  # in batches: the index is rebuilt once a tenth
            forgotten = set()
            while len(self.ended) > MAX_ENDED:
                forgotten.add(id(self.ended.popleft()))
            self._unindex(forgotten)

    def _unindex(self, forgotten: set) -> None:
        if not forgotten:
            return
        for key in list(self._named):
            kept = [request for request in self._named[key] if id(request) not in forgotten]
            if kept:
                self._named[key] = kept
            else:
                del self._named[key]
        self._prefixes = [(name, request) for name, request in self._prefixes if id(request) not in forgotten]

    def around(self, nano: int):
        """The requests in flight at `nano` (ended ones within SLACK of it)."""
        for request in list(self.open.values()):
            if request.begin <= nano:
                yield request
        for request in reversed(self.ended):
            if request.end + SLACK < nano:
                break  # those before it ended earlier still
            if request.begin <= nano:
                yield request

    def _naming(self, nano: int, *keys) -> list[_Request]:
        """The requests in flight at `nano` that name one of `keys`."""
        return [request for key in keys for request in self._named.get(key, ())
                if request.begin <= nano and (request.end is None or nano <= request.end + SLACK)]

    def busy_at(self, nano: int) -> bool:
        """A request of the build was in flight at `nano`, or may still claim an event of then."""
        return self.behind or any(True for _ in self.around(nano))

    def owns_container(self, container_id: str) -> bool:
        return container_id in self.containers or container_id[:12] in self.containers

    def claims(self, record: dict) -> bool:
        """The build asked for this event: its object is one the build created or named in a request then."""
        nano, kind, action = record["time_nano"], record["event_type"], record["action"]
        if kind == "container":
            container, name = record["container_id"], record["container_name"]
            if container and self.owns_container(container):
                return True
            # A container of another build (or not known yet) only through a request that causes this event
            # on it: `docker rm -f` its destroy, `docker exec` its exec; naming it (`docker wait`, `inspect`)
            # claims nothing.
            causes = _CONTAINER_CAUSES.get(action, ())
            keys = [("container", name)] if name else []
            if container:
                keys += [("container", container), ("container", container[:12])]
            if any(request.kind in causes for request in self._naming(nano, *keys)):
                return True
            return bool(container) and any(
                request.kind in causes and container.startswith(prefix) and request.begin <= nano
                and (request.end is None or nano <= request.end + SLACK) for prefix, request in self._prefixes)
        if action in ("untag", "delete"):  # named by image ID: only a deletion's answer names it
            return bool(self._naming(nano, ("image", record["attributes"].get("image_id"))))
        key = _record_key(record)
        if key is None:
            return False
        tagging = {"tag", "build", "commit", "import"}
        # "build": the agent's own record of a tag of an image made during the build (events.py)
        wanted = {"pull": {"pull"}, "push": {"push"}, "tag": tagging, "build": tagging, "import": {"import"}}.get(
            action, ())
        keys = [key, (*key[:2], "*")] if action == "push" else [key]
        return any(request.kind in wanted for request in self._naming(nano, *keys))

    def caused(self, record: dict) -> bool:
        """A request of the kind that causes this event (whose object no request names) was in flight then."""
        kinds = _CAUSES.get((record["event_type"], record["action"]))
        return bool(kinds) and any(request.kind in kinds for request in self.around(record["time_nano"]))

    def push_reporting(self, record: dict) -> bool:
        """A push of this record's tag is still in flight and has not reported its digest yet."""
        return any(request.kind == "push" and request.end is None and record["tag"] not in request.pushed
                   for request in self._pushes(record))

    def pushed_digest(self, record: dict) -> str:
        """The digest the build's push of this image reported, if it did."""
        for request in self._pushes(record):
            if request.kind == "push" and record["tag"] in request.pushed:
                return request.pushed[record["tag"]]
        return ""

    def _pushes(self, record: dict) -> list[_Request]:
        key = _record_key(record)
        return self._naming(record["time_nano"], key, (*key[:2], "*")) if key else []


def _record_key(record: dict):
    """The image reference of a pull, push, tag or import record as (registry, repository, tag or digest)."""
    if not record["image"]:
        return None
    if record["digest"] and not record["tag"]:
        return (*registry_and_repository(record["image"]), record["digest"])
    return _key(record["image"], record["tag"])


class _Journal:
    """A build's journal file, read as it grows; a line is taken only once it is whole."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.claims = Claims()

    def read(self) -> bool:
        """Takes the facts written since the last read; whether there were any."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(READ_LIMIT)
        except FileNotFoundError:
            return False
        # A journal grown faster than it is read is read in bounded steps; until it is caught up, what its
        # build may still claim is not known.
        self.claims.behind = len(data) == READ_LIMIT
        if not data:
            return False
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                fact = json.loads(line)
            except ValueError:
                continue
            if isinstance(fact, dict):
                self.claims.add(fact)
        return True


@dataclass
class Decision:
    builds: list[int]
    owner_uncertain: bool = False  # attributed by time while other builds ran
    unattributed: bool = False
    exact: bool = False


class Attributor:
    """Decides which builds an event record belongs to, from the builds' journals and their windows."""

    def __init__(self, windows):
        self.windows = windows
        self._journals: dict[int, _Journal] = {}
        self._lock = threading.Lock()

    def follow(self, build_id: int, journal_path: str) -> None:
        """From now on the build's events are known from its journal (read from its start)."""
        with self._lock:
            if build_id not in self._journals or self._journals[build_id].path != journal_path:
                self._journals[build_id] = _Journal(journal_path)
                self._journals[build_id].read()

    def forget(self, build_id: int) -> None:
        with self._lock:
            self._journals.pop(build_id, None)

    def following(self, build_id: int) -> bool:
        with self._lock:
            return build_id in self._journals

    def claims(self, build_id: int) -> Claims | None:
        with self._lock:
            journal = self._journals.get(build_id)
            return journal.claims if journal else None

    def refresh(self, horizon_nano: int = 0) -> bool:
        """Reads what the journals gained; whether they gained anything. Requests that ended well before
        `horizon_nano` (the newest event read: events come in order) are forgotten."""
        with self._lock:
            journals = list(self._journals.values())
        gained = False
        for journal in journals:
            gained = journal.read() or gained
            if horizon_nano:
                journal.claims.forget_before(horizon_nano)
        return gained

    def decide(self, record: dict, final: bool) -> Decision | None:
        """The builds the record goes to; None while it may still be claimed (ask again, final=True at last)."""
        nano = record["time_nano"]
        running = self.windows.builds_at(nano)
        with self._lock:
            exact = {build: self._journals[build].claims for build in running if build in self._journals}
        if not exact:
            return Decision(builds=running)
        # Builds without an endpoint cannot show they did not cause it: they get every event of their time,
        # and what they share is of uncertain owner (a push then is never cleaned up automatically).
        by_time = [build for build in running if build not in exact]
        claimers = [build for build, claims in exact.items() if claims.claims(record)]
        if claimers:
            certain = True
            if record["action"] == "push":
                if not final and any(exact[b].push_reporting(record) for b in claimers):
                    return None  # the digest the push reports comes with its last lines
                # The daemon reported a push to the builds whose push it did: one that only asked (a request
                # that never ran, or failed) is not its owner.
                reported = [b for b in claimers if exact[b].pushed_digest(record)]
                claimers, certain = (reported, True) if reported else (claimers, False)
            return Decision(builds=claimers + by_time, exact=True, owner_uncertain=bool(by_time) or not certain)
        if not final and any(claims.busy_at(nano) for claims in exact.values()):
            return None
        causers = [build for build, claims in exact.items() if claims.caused(record)]
        if causers and record["action"] != "push":
            return Decision(builds=causers + by_time, exact=True, owner_uncertain=bool(by_time))
        if by_time:
            return Decision(builds=by_time, owner_uncertain=len(running) > 1)
        return Decision(builds=[], unattributed=True)

    def pushed_digest(self, build_id: int, record: dict) -> str:
        claims = self.claims(build_id)
        return claims.pushed_digest(record) if claims else ""


def journal_path(directory, build_id: int) -> str:
    return os.path.join(str(directory), f"{build_id}.jsonl")
