"""The Docker daemon's event stream, read without losing or doubling events.

The daemon gives each listener about 100 ms to take an event before it drops it for that
listener, and replays only its last 256 events. So a reader thread does nothing but read into a
queue; a writer thread enriches events (digests of pushes, built images) and hands batches on.
docker-py's stream ends quietly when the connection breaks, so an end of stream is a reconnect
from the last event's time (`since`, which replays that event: records are de-duplicated
downstream), never a finish. The stream is closed only after the daemon has delivered
everything up to a given moment of its own clock (`until`).
"""

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from docker.errors import DockerException, ImageNotFound
from requests.exceptions import RequestException

from .daemon import DaemonError, daemon_client
from .references import split_reference

log = logging.getLogger(__name__)

IMAGE_ACTIONS = {"pull": "pull", "push": "push", "tag": "tag", "untag": "untag", "delete": "delete",
                 "import": "import", "load": "load", "create": "build"}
CONTAINER_ACTIONS = {"create": "create", "start": "start", "exec_start": "exec", "die": "die", "destroy": "destroy"}
BATCH_SIZE = 500
BATCH_WAIT = 0.5  # seconds a partial batch may wait for more events


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
        record["image"], record["tag"], _ = split_reference(attributes.get("image", ""))
        if "exitCode" in attributes:
            record["exit_code"] = int(attributes["exitCode"])
        return record
    return None


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


def daemon_time_nano(client) -> int:
    """The daemon's own clock, which events are stamped with (not this host's)."""
    return rfc3339_nano(client.info()["SystemTime"])


@dataclass
class StreamStats:
    received: int = 0
    recorded: int = 0
    reconnects: int = 0
    errors: list = field(default_factory=list)


class EventStream:
    """Reads one daemon's events from `since_nano` on and calls `deliver(records)` in batches.

    `start()`; `stop(until_nano)` returns after every event up to that daemon time was delivered.
    `enrich=True` asks the daemon for push digests and marks images built during the stream.
    """

    def __init__(self, docker_host: str, since_nano: int, deliver, enrich: bool = True):
        self.docker_host, self.deliver, self.enrich = docker_host, deliver, enrich
        self.last_nano = since_nano
        self.started_nano = since_nano
        self.events: queue.Queue = queue.Queue()
        self.stats = StreamStats()
        self._until: int | None = None
        self._stream = None
        self._reader = threading.Thread(target=self._read, name="docker-events-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="docker-events-writer", daemon=True)
        self._seen_images: set[str] = set()  # IDs that came by pull/import/load: not built here

    def start(self):
        self._reader.start()
        self._writer.start()

    def stop(self, until_nano: int, timeout: float = 60):
        self._until = until_nano
        if self._stream is not None:
            self._stream.close()  # unblocks the live read; the reader then reads up to `until`
        self._reader.join(timeout)
        self.events.put(None)  # the writer's end mark
        self._writer.join(timeout)

    # Reader: nothing but reading, so that the daemon never drops an event for us.
    def _read(self):
        delay, failures = 0.2, 0
        while True:  # ends when a bounded read (after stop()) is complete
            until, client = self._until, None
            try:
                client = daemon_client(self.docker_host)
                args = {"since": since_argument(self.last_nano), "decode": True,
                        "filters": {"type": ["image", "container"]}}
                if until is not None:
                    args["until"] = since_argument(until)
                self._stream = stream = client.events(**args)
                if until is None and self._until is not None:
                    stream.close()  # stop() came while connecting: read the bounded window instead
                    continue
                for raw in stream:
                    self.stats.received += 1
                    self.last_nano = max(self.last_nano, int(raw.get("timeNano") or 0))
                    self.events.put(raw)
                    delay, failures = 0.2, 0
                if until is not None:
                    return  # the daemon ended a bounded stream: everything up to `until` was read
                if self._until is None:
                    self.stats.reconnects += 1  # the stream ended by itself: the connection broke
            except (DaemonError, DockerException, RequestException, OSError) as exc:
                failures += 1
                if until is not None and failures > 20:
                    self.stats.errors.append(f"gave up reading events up to the end: {exc}")
                    return
                self.stats.reconnects += 1
                log.info("Docker event stream of %s broke (%s); reconnecting", self.docker_host or "DOCKER_HOST", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2)
            finally:
                if client is not None:
                    client.close()

    # Writer: enriches and delivers batches.
    def _write(self):
        client = daemon_client(self.docker_host) if self.enrich else None
        try:
            batch, done = [], False
            while not done:
                try:
                    raw = self.events.get(timeout=BATCH_WAIT)
                except queue.Empty:
                    raw = "flush"
                if raw is None:
                    done = True
                elif raw != "flush":
                    for record in self._records(raw, client):
                        batch.append(record)
                if batch and (done or raw == "flush" or len(batch) >= BATCH_SIZE):
                    self._deliver(batch)
                    batch = []
        finally:
            if client is not None:
                client.close()

    def _deliver(self, batch):
        try:
            self.deliver(batch)
            self.stats.recorded += len(batch)
        except Exception as exc:  # noqa: BLE001 - a failed batch must not stop the stream
            log.exception("Recording %d Docker events failed", len(batch))
            self.stats.errors.append(f"recording {len(batch)} events failed: {exc}")

    def _records(self, raw, client) -> list[dict]:
        record = parse_event(raw)
        if record is None:
            return []
        records = [record]
        if client is None:
            return records
        image_id = record["attributes"].get("image_id", "")
        if record["action"] in ("pull", "import", "load"):
            self._seen_images.add(image_id or self._image_id(client, record))
        elif record["action"] == "push" and not record["digest"]:
            record["digest"] = self._pushed_digest(client, record)
        elif record["action"] == "tag" and image_id and image_id not in self._seen_images:
            # The daemon has no "build" event for the classic builder: an image made during this
            # stream, not pulled, imported or loaded, and then tagged, was built here.
            if self._created_nano(client, image_id) >= self.started_nano:
                records.append({**record, "action": "build", "raw_action": "build"})
            self._seen_images.add(image_id)
        return records

    @staticmethod
    def _image(client, name):
        try:
            return client.images.get(name)
        except (ImageNotFound, DockerException, RequestException):
            return None

    def _image_id(self, client, record) -> str:
        image = self._image(client, f"{record['image']}:{record['tag']}" if record["tag"] else record["image"])
        return image.id if image is not None else ""

    def _pushed_digest(self, client, record) -> str:
        """A push event carries no digest; the image's RepoDigests has the registry's."""
        image = self._image(client, f"{record['image']}:{record['tag']}" if record["tag"] else record["image"])
        if image is None:
            return ""
        for repo_digest in image.attrs.get("RepoDigests") or []:
            name, _, digest = repo_digest.partition("@")
            if name == record["image"]:
                return digest
        return ""

    def _created_nano(self, client, image_id) -> int:
        image = self._image(client, image_id)
        return rfc3339_nano(image.attrs.get("Created", "")) if image is not None else 0
