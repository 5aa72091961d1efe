"""The agent's one event stream of its Docker daemon, read without losing or doubling events.

The daemon gives each listener about 100 ms to take an event before it drops it for that
listener, and replays only its last 256 events. So a reader thread does nothing but read into a
queue; a writer thread enriches events (digests of pushes, built images), gives each to the
builds running at its time (`attribute`) and hands the records on (`deliver`, the spool).
docker-py's stream ends quietly when the connection breaks, so an end of stream is a reconnect
from the last event's time (`since`, which replays that event: the writer drops what it has
seen), never a finish. `sync(until)` returns once every event up to that moment of the daemon's
clock has been delivered: a bounded read (`until`) of the window the live stream may not have
delivered yet, through the same writer.
"""

import collections
import itertools
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from docker.errors import DockerException, ImageNotFound
from requests.exceptions import RequestException

from .attribution import GRACE, Attributor, Decision
from .references import registry_and_repository, split_reference

log = logging.getLogger(__name__)

IMAGE_ACTIONS = {"pull": "pull", "push": "push", "tag": "tag", "untag": "untag", "delete": "delete",
                 "import": "import", "load": "load", "create": "build", "build": "build"}  # build: Podman's
CONTAINER_ACTIONS = {"create": "create", "start": "start", "exec_start": "exec", "die": "die", "destroy": "destroy"}
_HEX_ID = re.compile(r"[0-9a-f]{64}")
PODMAN_UNTIL_LEAD = 1_000_000_000  # ns: how much later than asked a bounded read of Podman's events ends
PODMAN_NAMING_TRIES = 20  # looks at a built image's names, 0.1 s apart (the writer waits: builds are rare)
SEEN_KEYS = 20_000  # events remembered to drop replays (a reconnect, a sync's bounded read)


def parse_event(raw: dict) -> dict | None:
    """A daemon event as an operation record (JSON-serialisable), or None when not recorded."""
    kind, action = raw.get("Type"), (raw.get("Action") or "").split(":", 1)[0]
    actor = raw.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    actor_id = actor.get("ID") or ""
    record = {
        "time_nano": int(raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000),
        "event_type": kind, "raw_action": raw.get("Action") or "", "actor_id": actor_id,
        "image": "", "tag": "", "digest": "", "container_id": "", "container_name": "", "exit_code": None,
        "attributes": attributes,
    }
    if kind == "image" and action in IMAGE_ACTIONS:
        record["action"] = IMAGE_ACTIONS[action]
        # pull/push name the reference as the actor; tag/untag/delete name the image ID.
        reference = actor_id if action in ("pull", "push") else attributes.get("name", actor_id)
        record["image"], record["tag"], record["digest"] = split_reference(reference)
        if reference.startswith("sha256:"):
            record["image"], record["tag"], record["digest"] = "", "", ""
            record["attributes"].setdefault("image_id", actor_id)
        if actor_id.startswith("sha256:"):
            record["attributes"].setdefault("image_id", actor_id)
        return record
    if kind == "container" and action in CONTAINER_ACTIONS:
        record["action"] = CONTAINER_ACTIONS[action]
        record["container_id"] = actor_id
        record["container_name"] = attributes.get("name", "")
        image = attributes.get("image", "")
        # A container created from an image ID names it whole (`sha256:<hex>` is no repository with a tag).
        record["image"], record["tag"] = (image, "") if image.startswith("sha256:") else split_reference(image)[:2]
        if "exitCode" in attributes:
            record["exit_code"] = int(attributes["exitCode"])
        return record
    return None


def podman_event(raw: dict) -> dict | None:
    """An event of Podman's Docker-compatible API in Docker's shape, for parse_event; None when not recorded.

    Podman names an image event's reference only in Attributes.name (Docker: the actor of a pull or push), its
    image IDs without `sha256:`, a built image by its ID (action `build`), a removed container `remove` (Docker:
    `destroy`), a removed image `remove` or `delete`. It also reports a `pull` of a `localhost/` image, the name
    its own builds and imports get: nothing came from a registry then.
    """
    actor = raw.get("Actor") or {}
    # containerExitCode is "0" on every event (the exit code is exitCode, on die); podId and image are often empty.
    attributes = {key: value for key, value in (actor.get("Attributes") or {}).items()
                  if key != "containerExitCode" and (value or key not in ("podId", "image"))}
    actor_id, action = actor.get("ID") or "", (raw.get("Action") or "").split(":", 1)[0]
    if raw.get("Type") == "container":
        action = {"remove": "destroy", "died": "die"}.get(action, action)
        return {**raw, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes}}
    if raw.get("Type") != "image":
        return None
    name = attributes.pop("name", "")
    image_id = f"sha256:{actor_id}" if _HEX_ID.fullmatch(actor_id) else actor_id
    if action in ("pull", "push"):
        if not name or (action == "pull" and name.startswith("localhost/")):
            return None
        if image_id:
            attributes["image_id"] = image_id
        actor_id = name
    elif action == "build":
        actor_id, action = (f"sha256:{name}" if _HEX_ID.fullmatch(name) else name), "build"
    else:
        action = "delete" if action == "remove" else action
        actor_id = image_id
        if name and not _HEX_ID.fullmatch(name):
            attributes["name"] = name
    return {**raw, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes}}


def since_argument(time_nano: int) -> str:
    """docker-py would cut a datetime to whole seconds; '<seconds>.<nanoseconds>' keeps them."""
    return f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"


def rfc3339_nano(text: str) -> int:
    """'2026-11-26T23:59:01.123456789Z' (the daemon's time format) in nanoseconds; 0 if unreadable."""
    seconds, _, rest = text.partition(".")
    fraction = "".join(itertools.takewhile(str.isdigit, rest))
    try:
        stamp = datetime.fromisoformat((seconds + rest[len(fraction):]).replace("Z", "+00:00"))
    except ValueError:
        return 0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return int(stamp.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


class BuildWindows:
    """Which builds ran when, on the daemon's clock: an event belongs to every build running at its time.

    A build's window opens just before its command starts and closes just after it ends (both read
    from the daemon). Closed windows are kept for a while: their last events may arrive later.
    """

    KEEP_CLOSED = 600 * 1_000_000_000

    def __init__(self):
        self._windows: dict[int, list] = {}  # build id -> [start, end or None]
        self._lock = threading.Lock()

    def open(self, build_id: int, start_nano: int) -> None:
        with self._lock:
            self._windows[build_id] = [start_nano, None]

    def close(self, build_id: int, end_nano: int) -> None:
        with self._lock:
            if build_id in self._windows:
                self._windows[build_id][1] = end_nano
            stale = [b for b, (_, end) in self._windows.items()
                     if end is not None and end < end_nano - self.KEEP_CLOSED]
            for build in stale:
                del self._windows[build]

    def forget(self, build_id: int) -> None:
        with self._lock:
            self._windows.pop(build_id, None)

    def builds_at(self, nano: int) -> list[int]:
        with self._lock:
            return sorted(b for b, (start, end) in self._windows.items()
                          if start <= nano and (end is None or nano <= end))

    def started_at(self, nano: int) -> int:
        """The earliest start of the builds running at `nano`."""
        with self._lock:
            starts = [start for start, end in self._windows.values() if start <= nano and (end is None or nano <= end)]
        return min(starts, default=nano)


@dataclass
class StreamStats:
    received: int = 0
    recorded: int = 0
    reconnects: int = 0
    errors: list = field(default_factory=list)


class _Sync:
    def __init__(self):
        self.done = threading.Event()


_TICK = object()  # the writer's pause while records wait for journals


class EventStream:
    """Reads one daemon's events from `since_nano` on, for as long as the agent runs.

    `windows` (BuildWindows) says which builds an event belongs to; `deliver(record)` takes each
    record that belongs to some build, with their ids in `builds`. `start()`, `sync(until_nano)`,
    `stop()`. `connect()` gives a new docker client (the reader and the writer each hold their own).
    """

    def __init__(self, connect, since_nano: int, windows: BuildWindows, deliver, enrich: bool = True,
                 attributor: Attributor | None = None, engine: str = "docker"):
        self.connect, self.windows, self.deliver, self.enrich = connect, windows, deliver, enrich
        self.podman = engine == "podman"  # its events are translated (podman_event); its pushes' digests unknown
        self.attributor = attributor  # builds with their own Docker endpoint: which of them asked (issue 16)
        self._pending: list[tuple[dict, float]] = []  # records waiting for their builds' journals
        self._refreshed_at = 0  # when the journals were last read (ns)
        self.last_nano = since_nano  # the newest event read
        self.processed_nano = since_nano  # the newest event dealt with (spooled or dropped): resume here
        self.events: queue.Queue = queue.Queue()
        self.stats = StreamStats()
        self._stopped = threading.Event()
        self._stream = None
        self._seen: collections.OrderedDict = collections.OrderedDict()
        self._sync_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="docker-events-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="docker-events-writer", daemon=True)
        self._seen_images: set[str] = set()  # IDs that came by pull/import/load: not built here
        self.connected = threading.Event()

    def start(self):
        self._reader.start()
        self._writer.start()

    def stop(self, timeout: float = 10):
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self._reader.join(timeout)
        self.events.put(None)
        self._writer.join(timeout)

    def sync(self, until_nano: int, timeout: float = 60) -> bool:
        """Returns once every event up to `until_nano` (daemon time) has gone through `deliver`.

        The live stream may still hold some in transit: a bounded read from the newest event read
        up to `until_nano` gets them too (the daemon ends it at `until`), and a mark queued after
        them tells when the writer is through. False when the daemon could not be read.
        """
        with self._sync_lock:
            client = None
            try:
                client = self.connect()
                since, bound = min(self.last_nano, until_nano), until_nano
                if self.podman:
                    # Podman ends a read at `until` by its clock, before reading its events file when that moment
                    # has passed, and writes events to that file a moment after they happen: it is asked a
                    # moment later, and what came after `until_nano` is left to the live stream.
                    bound = max(until_nano, time.time_ns()) + PODMAN_UNTIL_LEAD
                for raw in client.events(since=since_argument(since), until=since_argument(bound),
                                         decode=True, filters={"type": ["image", "container"]}):
                    if int(raw.get("timeNano") or 0) <= until_nano:
                        self.events.put(raw)
            except Exception as exc:  # noqa: BLE001 - the daemon is gone: what was read is all there is
                self.stats.errors.append(f"reading events up to the end failed: {exc}")
                return False
            finally:
                if client is not None:
                    client.close()
            mark = _Sync()
            self.events.put(mark)
            return mark.done.wait(timeout)

    # Reader: nothing but reading, so that the daemon never drops an event for us.
    def _read(self):
        delay, reported = 0.2, False
        while not self._stopped.is_set():
            client = None
            try:
                client = self.connect()
                self._stream = stream = client.events(since=since_argument(self.last_nano), decode=True,
                                                      filters={"type": ["image", "container"]})
                self.connected.set()
                if reported:
                    log.info("Docker event stream back")
                    reported = False
                for raw in stream:
                    self.stats.received += 1
                    self.last_nano = max(self.last_nano, int(raw.get("timeNano") or 0))
                    self.events.put(raw)
                    delay = 0.2
                if not self._stopped.is_set():
                    self.stats.reconnects += 1  # the stream ended by itself: the connection broke
            except Exception as exc:  # noqa: BLE001 - a daemon away or restarting: read again
                if self._stopped.is_set():
                    return
                self.connected.clear()
                self.stats.reconnects += 1
                if not reported:  # once an outage, not at every attempt
                    log.info("Docker event stream broke (%s); reconnecting", exc)
                    reported = True
                self._stopped.wait(delay)
                delay = min(delay * 2, 5)
            finally:
                if client is not None:
                    client.close()

    # Writer: drops replays, enriches, attributes, delivers.
    def _write(self):
        client = None
        while True:
            try:
                raw = self.events.get(timeout=0.05 if self._pending else None)
            except queue.Empty:
                raw = _TICK
            if raw is None:
                break
            self._release(final=False)
            if isinstance(raw, _Sync):
                self._release_all()
                raw.done.set()
                continue
            if raw is _TICK:
                continue
            nano = int(raw.get("timeNano") or 0)
            self.processed_nano = max(self.processed_nano, nano)
            if self._replayed(raw):
                continue
            if not self.windows.builds_at(nano):
                continue
            if client is None and self.enrich:
                try:
                    client = self.connect()
                except Exception:  # noqa: BLE001 - enrichment is best effort
                    client = None
            if self.attributor is not None and self._refreshed_at <= nano:
                self._refresh()
            for record in self._records(raw, client):
                if not self._place(record):
                    self._pending.append((record, time.monotonic() + GRACE))
        if client is not None:
            client.close()

    def _refresh(self) -> bool:
        self._refreshed_at = time.time_ns()
        return self.attributor.refresh(self.processed_nano)

    def _place(self, record: dict, final: bool = False) -> bool:
        """Delivers the record to its builds; False when it must wait for their journals to say."""
        if self.attributor is None:
            decision = Decision(builds=self.windows.builds_at(record["time_nano"]))
        else:
            decision = self.attributor.decide(record, final=final)
        if decision is None:
            return False
        if decision.exact and record["action"] == "push" and len(decision.builds) == 1:
            record["digest"] = self.attributor.pushed_digest(decision.builds[0], record) or record["digest"]
        record = {**record, "builds": decision.builds}
        if decision.owner_uncertain:
            record["owner_uncertain"] = True
        if decision.unattributed:
            record["unattributed"] = True
        try:
            self.deliver(record)
            self.stats.recorded += 1
        except Exception as exc:  # noqa: BLE001 - a failed record must not stop the stream
            log.exception("Spooling a Docker event failed")
            self.stats.errors.append(f"spooling an event failed: {exc}")
        return True

    def _release(self, final: bool):
        """Places the records kept for their journals again; those past their deadline for good."""
        if not self._pending:
            return
        gained = self._refresh()
        now = time.monotonic()
        if not (gained or final or self._pending[0][1] <= now):
            return  # nothing new to decide on (the oldest record comes first)
        # One assignment: resume_nano, read by another thread, never sees the list half done.
        self._pending = [(record, deadline) for record, deadline in self._pending
                         if not self._place(record, final=final or now >= deadline)]

    def _release_all(self):
        """Before a sync's mark: every record kept is placed, at the latest when its deadline comes."""
        while self._pending:
            self._release(final=False)
            if self._pending:
                time.sleep(0.05)

    @property
    def resume_nano(self) -> int:
        """Where a restarted agent reads the daemon's events from: not past a record still kept."""
        pending = self._pending
        if not pending:
            return self.processed_nano
        return min(self.processed_nano, min(record["time_nano"] for record, _ in pending) - 1)

    def _replayed(self, raw) -> bool:
        actor = raw.get("Actor") or {}
        key = (raw.get("timeNano"), raw.get("Type"), raw.get("Action"), actor.get("ID"))
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)
        return False

    def _records(self, raw, client) -> list[dict]:
        record = parse_event(raw) if not self.podman else (
            parse_event(translated) if (translated := podman_event(raw)) is not None else None)
        if record is None:
            return []
        records = [record]
        if client is None:
            return records
        image_id = record["attributes"].get("image_id", "")
        if record["action"] == "pull":
            # What the daemon knows of the pulled image: its ID (containers made from it name it so) and the
            # registry's digest.
            image = self._image(client, _reference_of(record))
            if image is not None:
                record["attributes"].setdefault("image_id", image.id)
                record["digest"] = record["digest"] or _repo_digest(image, record["image"])
            self._seen_images.add(image.id if image is not None else "")
        elif record["action"] in ("import", "load"):
            self._seen_images.add(image_id or self._image_id(client, record))
        elif record["action"] == "push" and not record["digest"] and not self.podman:
            # Podman's RepoDigests name its local manifest, which a push may convert (another digest), and it
            # reports a push that failed too: the digest is what the build's endpoint heard the push answer.
            record["digest"] = self._pushed_digest(client, record)
        elif record["action"] == "build" and self.podman and not record["image"]:
            # Podman's build event names the image by its ID alone (and no tag event follows): a record for each
            # of its names, which the build's request named (`-t`).
            names = [split_reference(tag)[:2] for tag in self._podman_built_tags(client, image_id)]
            records = [{**record, "image": name, "tag": tag} for name, tag in names] or records
            self._seen_images.add(image_id)
        elif record["action"] == "tag" and image_id and image_id not in self._seen_images:
            # The daemon has no "build" event for the classic builder: an image made during a
            # build, not pulled, imported or loaded, and then tagged, was built there.
            if self._created_nano(client, image_id) >= self.windows.started_at(record["time_nano"]):
                records.append({**record, "action": "build", "raw_action": "build"})
            self._seen_images.add(image_id)
        return records

    @staticmethod
    def _image(client, name):
        try:
            return client.images.get(name)
        except (ImageNotFound, DockerException, RequestException):
            return None

    def _podman_built_tags(self, client, image_id: str) -> list[str]:
        """The names of an image Podman just built: it reports the build a moment before it names the image."""
        for _ in range(PODMAN_NAMING_TRIES):
            image = self._image(client, image_id) if image_id else None
            if image is None or image.tags:
                return image.tags if image is not None else []
            time.sleep(0.1)
        return []

    def _image_id(self, client, record) -> str:
        image = self._image(client, _reference_of(record))
        return image.id if image is not None else ""

    def _pushed_digest(self, client, record) -> str:
        """A push event carries no digest; the image's RepoDigests has the registry's."""
        image = self._image(client, _reference_of(record))
        return _repo_digest(image, record["image"]) if image is not None else ""

    def _created_nano(self, client, image_id) -> int:
        image = self._image(client, image_id)
        return rfc3339_nano(image.attrs.get("Created", "")) if image is not None else 0


def _reference_of(record) -> str:
    if record["tag"]:
        return f"{record['image']}:{record['tag']}"
    return f"{record['image']}@{record['digest']}" if record["digest"] else record["image"]


def _repo_digest(image, repository: str) -> str:
    """The registry's digest of `image` in `repository`, from its RepoDigests (however Docker spells the name)."""
    wanted = registry_and_repository(repository)
    for repo_digest in image.attrs.get("RepoDigests") or []:
        name, _, digest = repo_digest.partition("@")
        if registry_and_repository(name) == wanted:
            return digest
    return ""
