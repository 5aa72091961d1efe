"""Free Disk Space on the agent's host: remove images builds left, least recently used first, then
prune BuildKit's build cache when that is not enough.

Only images that builds on this agent created or pulled are candidates (the server tracks them
from the builds' operations and hands the list over, with their last use); an image no build made
stays. An image stays too, with the reason recorded, when
- a container uses it, running or stopped;
- a build running on this agent pulled, built, tagged or ran it (`ImageUses`, fed by the agent's
  event stream);
- it was created, or last used by a build, less than the agent's minimum age ago;
- one of its references matches one of the agent's keep patterns (`re.search`, so unanchored: write
  `^...$` to match a whole reference), as `docker images` shows it or in full
  (`docker.io/library/busybox:latest`).
The plan applies these checks to the daemon's lists. Right before each removal they are made again
on the image as it is then: its tags now (a reference that now names another image is not
removed), the containers now, and the events read up to now; so an image that a build started to
use after the plan stays. What the daemon does between that check and the removal (milliseconds)
is not seen; nor is a base image that BuildKit reads from the image store without any event (the
minimum age covers those that builds used lately).

Free space is measured on the volume holding the Docker data path and re-read after each removal,
which stops as soon as the requirement is met. When images are not enough, BuildKit's cache is
pruned down to what must go (`docker builder prune --keep-storage`: least recently used records
first; records shared with images, which would free nothing, stay).
"""

import ntpath
import os
import platform
import re
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from .protocol import MAX_SIZE, TrackedImage
from .references import registry_and_repository, split_reference

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_EPOCH = datetime.fromtimestamp(0, timezone.utc)


class CleanupError(Exception):
    """The clean-up cannot run (bad size, data path missing, daemon unreachable); nothing was removed."""


def parse_size(text: str) -> int:
    """'500M', '20G', '1T', '1.5G' or bytes; binary units (1G = 1024³ bytes); 1 byte to MAX_SIZE."""
    match = _SIZE_RE.match(text or "")
    if not match:
        raise CleanupError(f"'{text}' is not a size: use a number with K, M, G or T (like 500M, 20G, 1T)")
    # Decimal, not float: a number too long for a float would be infinity, which int() cannot take.
    try:
        size = int(Decimal(match.group(1)) * _UNITS[match.group(2).upper()])
    except InvalidOperation:
        raise CleanupError(f"'{text}' is more than any disk holds") from None
    if size < 1:
        raise CleanupError(f"'{text}' is no space at all: give a size of at least 1 byte (like 500M, 20G, 1T)")
    if size > MAX_SIZE:
        raise CleanupError(f"'{text}' is more than any disk holds: at most {MAX_SIZE // _UNITS['T']}T "
                           f"({MAX_SIZE} bytes)")
    return size


def human(size: int | None) -> str:
    if size is None:
        return "—"
    for unit in ("T", "G", "M", "K"):
        if abs(size) >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"


def default_data_path() -> str:
    system = platform.system()
    if system == "Linux":
        return "/var/lib/docker"
    if system == "Windows":
        return ntpath.normpath(os.environ.get("ProgramData", "C:\\ProgramData"))
    return os.path.expanduser("~")


def data_path(admin_setting: str, environment: str) -> tuple[str, str]:
    """The Docker data path and where it comes from (to name in errors): the agent's setting in the
    admin, else DOCKERSUPPORT_DOCKER_DATA_PATH on the host, else the OS default."""
    if admin_setting:
        return admin_setting, "the agent's 'Docker data path' in the admin"
    if environment:
        return environment, "DOCKERSUPPORT_DOCKER_DATA_PATH"
    return default_data_path(), (f"the default for {platform.system() or 'this system'} (set the agent's 'Docker "
                                 "data path' in the admin or DOCKERSUPPORT_DOCKER_DATA_PATH)")


def free_bytes(path: str, origin: str) -> int:
    if not os.path.isdir(path):
        raise CleanupError(f"the Docker data path {path} does not exist; it comes from {origin}")
    return shutil.disk_usage(path).free


# --- What keeps an image ------------------------------------------------------------------------------

def keep_patterns_parse(text: str | Iterable[str]) -> list[re.Pattern]:
    """The agent's keep patterns: regular expressions, one per line (blank lines are skipped).

    Raises CleanupError naming every pattern that is not a regular expression: a clean-up that
    would ignore a keep pattern must not run.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    patterns, errors = [], []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            patterns.append(re.compile(line))
        except (re.error, RecursionError, OverflowError) as exc:
            errors.append(f"line {number}: {line!r} is not a regular expression ({exc})")
    if errors:
        raise CleanupError("keep patterns: " + "; ".join(errors))
    return patterns


def canonical(reference: str) -> str:
    """A reference in full, however Docker or a person spells it: 'busybox' → 'docker.io/library/busybox:latest'.

    Image IDs stay as they are.
    """
    if reference.startswith("sha256:"):
        return reference
    name, tag, digest = split_reference(reference)
    registry, repository = registry_and_repository(name)
    full = f"{registry}/{repository}"
    if tag or not digest:
        full += f":{tag or 'latest'}"
    return full + (f"@{digest}" if digest else "")


def record_names(record: dict) -> set[str]:
    """The names of the image an operation record (agent/events.py) is about, in full, and its ID."""
    names = set()
    image, tag, digest = record.get("image") or "", record.get("tag") or "", record.get("digest") or ""
    if image:
        reference = image + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        names.add(canonical(reference))
    image_id = (record.get("attributes") or {}).get("image_id") or ""
    if image_id.startswith("sha256:"):
        names.add(image_id)
    return names


class ImageUses:
    """What builds on this agent did with images, from its event stream: the images each running build
    touched (pulled, built, tagged, pushed, ran), and the last use of each image by any build.

    Names are full references and image IDs (`record_names`). Kept in memory: a restarted agent
    knows only what its builds did since it started (see `Agent._image_build_use` for what it does
    about builds it adopted).
    """

    LIMIT = 50_000  # names whose last use is remembered; the oldest are forgotten first

    def __init__(self):
        self._lock = threading.Lock()
        self._last: OrderedDict[str, int] = OrderedDict()  # name -> daemon time (ns) of its last use
        self._builds: dict[int, set[str]] = {}

    def record(self, record: dict) -> None:
        names = record_names(record)
        if not names:
            return
        nano = int(record.get("time_nano") or 0)
        with self._lock:
            for build_id in record.get("builds") or ():
                self._builds.setdefault(build_id, set()).update(names)
            for name in names:
                self._last[name] = max(nano, self._last.get(name, 0))
                self._last.move_to_end(name)
            while len(self._last) > self.LIMIT:
                self._last.popitem(last=False)

    def builds_using(self, names: set[str], builds: Iterable[int]) -> list[int]:
        """Which of `builds` touched an image known by any of `names`."""
        with self._lock:
            return [b for b in builds if self._builds.get(b, set()) & names]

    def last_used(self, names: set[str]) -> datetime | None:
        with self._lock:
            nano = max((self._last.get(name, 0) for name in names), default=0)
        return datetime.fromtimestamp(nano / 1e9, timezone.utc) if nano else None

    def forget_builds_except(self, builds: Iterable[int]) -> None:
        keep = set(builds)
        with self._lock:
            for build_id in set(self._builds) - keep:
                del self._builds[build_id]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Policy:
    """What keeps an image besides its containers: the agent's settings and what its running builds do.

    `build_use(names, last_used)`: why a build running on the agent may use the image known by
    `names` (last used by a build at `last_used`), or ''. `refresh()`: reads the daemon's events up to
    now, so that build_use knows what happened until this moment; False when they could not be read.
    `last_use(names)`: the agent's own latest record of a build using the image. `now()`: the
    daemon's clock (image times and build uses are on it).
    """

    keep_patterns: list[re.Pattern] = field(default_factory=list)
    min_age: int = 0  # seconds
    now: Callable[[], datetime] = _utc_now
    build_use: Callable[[set[str], datetime | None], str] | None = None
    refresh: Callable[[], bool] | None = None
    last_use: Callable[[set[str]], datetime | None] | None = None


@dataclass
class Candidate:
    image_id: str
    references: list[str]  # the tracked references that point to it (what is removed)
    size: int
    last_used_at: datetime  # by a build, as the server tracks it
    keeps_other_tags: bool  # other tags (not from builds) keep the image: removing ours frees nothing
    tags: list[str] = field(default_factory=list)  # all its references as the daemon lists them (tags, digests)
    created_at: datetime | None = None
    kept: str = ""  # why it stays, when something keeps it

    def names(self) -> set[str]:
        """Its ID and references in full: what builds' operations and keep patterns are compared with."""
        return {self.image_id} | {canonical(r) for r in self.tags} | {canonical(r) for r in self.references
                                                                    if not r.startswith("sha256:")}

    def record(self, **extra) -> dict:
        return {"image": self.image_id, "references": self.references, "size": self.size, **extra}


def keep_reason(candidate: Candidate, policy: Policy, containers: list[str], now: datetime) -> str:
    """Why the image stays ('' when nothing keeps it): containers, running builds, age, keep patterns."""
    if containers:
        more = f" and {len(containers) - 3} more" if len(containers) > 3 else ""
        return f"a container uses it ({', '.join(containers[:3])}{more})"
    last_used = candidate.last_used_at
    if policy.last_use is not None:
        last_used = max(filter(None, (last_used, policy.last_use(candidate.names()))))
    if policy.build_use is not None:
        reason = policy.build_use(candidate.names(), last_used)
        if reason:
            return reason
    if policy.min_age:
        created = candidate.created_at or _EPOCH
        newest, what = (last_used, "last used by a build") if last_used >= created else (created, "created")
        age = (now - newest).total_seconds()
        if age < policy.min_age:
            return f"{what} {max(int(age), 0)} s ago, less than the minimum age of {policy.min_age} s"
    shown = sorted(set(candidate.tags) | {r for r in candidate.references if not r.startswith("sha256:")})
    for pattern in policy.keep_patterns:
        for reference in shown:
            if pattern.search(reference) or pattern.search(canonical(reference)):
                return f"{reference} matches the keep pattern {pattern.pattern!r}"
    return ""


# --- The plan ------------------------------------------------------------------------------------------

@dataclass
class Result:
    path: str
    required: int
    free_before: int
    free_after: int
    plan: list[Candidate] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)  # {"image", "references", "size", "freed", "reason"}
    kept: list[dict] = field(default_factory=list)  # {"image", "references", "size", "reason"}
    build_cache: dict | None = None  # dry run: {"reclaimable", "would_free"}
    errors: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.free_after >= self.required

    @property
    def shortfall(self) -> int:
        return max(self.required - self.free_after, 0)


def _containers_by_image(client) -> dict[str, list[str]]:
    # The list endpoint's summaries, not client.containers.list(), which inspects each container. A
    # container summary's ImageID is inspect's Image.
    using: dict[str, list[str]] = {}
    for container in client.api.containers(all=True):
        name = ((container.get("Names") or ["?"])[0] or "?").lstrip("/")
        using.setdefault(container.get("ImageID") or "", []).append(name)
    return using


def _created(seconds) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(seconds), timezone.utc) if seconds else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def plan_images(client, tracked: list[TrackedImage], policy: Policy | None = None) -> list[Candidate]:
    """Tracked images still on the daemon, least recently used first; those something keeps say why in `kept`."""
    policy = policy or Policy()
    last_use: dict[str, datetime] = {}
    for image in tracked:
        last_use[image.reference] = max(image.last_used_at, last_use.get(image.reference, image.last_used_at))
    # The list endpoints' summaries, not client.images.list(), which inspects each image (one request
    # each). An image summary has the same Id, RepoTags and Size as inspect, except that older daemons
    # list an untagged image's RepoTags as ["<none>:<none>"] (inspect: []).
    using = _containers_by_image(client)
    now = policy.now()
    images: list[Candidate] = []
    for summary in client.api.images():
        image_id = summary["Id"]
        tags = [t for t in summary.get("RepoTags") or [] if t != "<none>:<none>"]
        ours = [t for t in tags if t in last_use]
        if image_id in last_use:
            ours.append(image_id)
        if not ours:
            continue
        digests = [d for d in summary.get("RepoDigests") or [] if d != "<none>@<none>"]
        candidate = Candidate(
            image_id=image_id, references=ours, size=int(summary.get("Size") or 0),
            last_used_at=max(last_use[ref] for ref in ours), keeps_other_tags=any(t not in last_use for t in tags),
            tags=tags + digests, created_at=_created(summary.get("Created")))
        candidate.kept = keep_reason(candidate, policy, using.get(image_id, []), now)
        images.append(candidate)
    return sorted(images, key=lambda c: (c.last_used_at, c.image_id))


def plan_candidates(client, tracked: list[TrackedImage], policy: Policy | None = None) -> list[Candidate]:
    """Tracked images still on the daemon that nothing keeps, least recently used first."""
    return [candidate for candidate in plan_images(client, tracked, policy) if not candidate.kept]


# --- Removal -------------------------------------------------------------------------------------------

def _status(exc: Exception) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _error_text(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text)[:500]


def recheck(client, candidate: Candidate, tracked_references: set[str], policy: Policy) -> tuple[list[str], str]:
    """Right before a removal: the references to remove now, or why the image stays after all.

    The checks of the plan again, on the image as it is now: its tags (a tracked reference that
    now names another image is not removed), the containers now, the builds' events up to now.
    ([], '') when the image is gone already.
    """
    if policy.refresh is not None and not policy.refresh():
        return [], "the daemon's latest events could not be read: a running build may be using it"
    try:
        image = client.api.inspect_image(candidate.image_id)
    except Exception as exc:  # noqa: BLE001 - docker's errors: gone, or cannot tell
        if _status(exc) == 404:
            return [], ""
        return [], f"the daemon could not say what the image is now: {_error_text(exc)}"
    tags = list(image.get("RepoTags") or [])
    references = [r for r in candidate.references if r == candidate.image_id or r in tags]
    if not references:
        return [], f"{', '.join(candidate.references)} now names another image"
    candidate.references = references
    candidate.tags = tags + list(image.get("RepoDigests") or [])
    candidate.keeps_other_tags = any(t not in tracked_references for t in tags)
    candidate.created_at = _created_rfc3339(image.get("Created") or "") or candidate.created_at
    using = _containers_by_image(client).get(candidate.image_id, [])
    reason = keep_reason(candidate, policy, using, policy.now())
    return ([], reason) if reason else (references, "")


def _created_rfc3339(text: str) -> datetime | None:
    try:
        # '2026-11-26T23:59:01.123456789Z': fromisoformat takes at most microseconds.
        head, _, rest = text.partition(".")
        return datetime.fromisoformat(head.replace("Z", "") + "+00:00") if head else None
    except ValueError:
        return None


def images_remove_until_free(client, tracked: list[TrackedImage], required: int, path: str, origin: str, *,
                             dry_run: bool = False, progress=None, policy: Policy | None = None) -> Result:
    """Removes candidates until `required` bytes are free on the volume of `path`, then prunes BuildKit's
    build cache when images were not enough. Without `policy`, only containers keep an image."""
    say = progress or (lambda text: None)
    policy = policy or Policy()
    free = free_bytes(path, origin)
    result = Result(path=path, required=required, free_before=free, free_after=free)
    images = plan_images(client, tracked, policy)
    result.plan = [candidate for candidate in images if not candidate.kept]
    if dry_run:
        _plan_dry(client, images, result)
        return result
    tracked_references = {image.reference for image in tracked}
    for candidate in images:
        if result.free_after >= required:
            break
        if candidate.kept:
            result.kept.append(candidate.record(reason=candidate.kept))
            continue
        _candidate_remove(client, candidate, tracked_references, policy, result, origin, say)
    if result.free_after < required:
        _build_cache_prune(client, result, origin, say)
    return result


def _candidate_remove(client, candidate: Candidate, tracked_references: set[str], policy: Policy, result: Result,
                      origin: str, say) -> None:
    references, reason = recheck(client, candidate, tracked_references, policy)
    if reason:
        result.kept.append(candidate.record(reason=reason))
        say(f"kept {', '.join(candidate.references)}: {reason}")
        return
    needed = result.required - result.free_after
    removed, refused = [], []
    for reference in references:
        try:
            client.api.remove_image(reference, noprune=False)
            removed.append(reference)
        except Exception as exc:  # noqa: BLE001 - docker's errors: report and go on with the next
            if _status(exc) == 404:
                continue  # gone meanwhile
            refused.append(_error_text(exc))
            result.errors.append(f"{reference}: {_error_text(exc)}")
    if refused and not removed:
        result.kept.append(candidate.record(reason=f"the daemon refused to remove it: {refused[0]}"))
        return
    if not removed:
        return
    before, result.free_after = result.free_after, free_bytes(result.path, origin)
    why = (f"not used by a build since {candidate.last_used_at:%Y-%m-%d %H:%M:%S %Z} (least recently used); "
           f"{human(needed)} more was needed")
    if candidate.keeps_other_tags:
        why += "; only untagged: other tags keep the image"
    result.removed.append({"image": candidate.image_id, "references": removed, "size": candidate.size,
                           "freed": max(result.free_after - before, 0), "reason": why})
    say(f"removed {', '.join(removed)} ({human(candidate.size)}); free now {human(result.free_after)}")


# --- BuildKit's build cache ------------------------------------------------------------------------------

def build_cache_usage(client) -> tuple[int, int]:
    """(size, reclaimable) of BuildKit's cache in bytes, as BuildKit counts them for --keep-storage: records
    shared with images are not counted (removing them frees nothing); records in use, and BuildKit's
    internal and frontend records (kept by a prune without --all), cannot go."""
    records = [r for r in client.api.df().get("BuildCache") or [] if not r.get("Shared")]
    size = sum(int(r.get("Size") or 0) for r in records)
    reclaimable = sum(int(r.get("Size") or 0) for r in records
                      if not r.get("InUse") and r.get("Type") not in ("internal", "frontend"))
    return size, reclaimable


def _build_cache_prune(client, result: Result, origin: str, say) -> None:
    needed = result.required - result.free_after
    try:
        size, reclaimable = build_cache_usage(client)
        if reclaimable <= 0:
            return
        # BuildKit removes least recently used records until the cache holds at most keep_storage
        # bytes; 0 means no limit: everything that can go goes.
        keep = max(size - needed, 0)
        answer = client.api.prune_builds(keep_storage=keep) or {}
    except Exception as exc:  # noqa: BLE001 - docker's errors (an old daemon: API < 1.39)
        result.errors.append(f"build cache: {_error_text(exc)}")
        return
    before, result.free_after = result.free_after, free_bytes(result.path, origin)
    reclaimed = int(answer.get("SpaceReclaimed") or 0)
    result.removed.append({
        "kind": "build cache", "image": "", "references": [], "size": reclaimed,
        "freed": max(result.free_after - before, 0), "records": len(answer.get("CachesDeleted") or []),
        "reason": f"removing images was not enough: {human(needed)} more was needed; BuildKit's build cache "
                  f"({human(size)}) pruned down to {human(keep)}, least recently used first"})
    say(f"pruned BuildKit's build cache ({human(reclaimed)}); free now {human(result.free_after)}")


def _plan_dry(client, images: list[Candidate], result: Result) -> None:
    """The images that would go, until the estimate meets the requirement; then the build cache."""
    result.plan = []
    for candidate in images:
        if result.free_after >= result.required:
            break
        if candidate.kept:
            result.kept.append(candidate.record(reason=candidate.kept))
            continue
        result.plan.append(candidate)
        result.free_after += 0 if candidate.keeps_other_tags else candidate.size
    if result.free_after >= result.required:
        return
    try:
        _, reclaimable = build_cache_usage(client)
    except Exception as exc:  # noqa: BLE001 - docker's errors
        result.errors.append(f"build cache: {_error_text(exc)}")
        return
    if reclaimable:
        would_free = min(reclaimable, result.required - result.free_after)
        result.build_cache = {"reclaimable": reclaimable, "would_free": would_free}
        result.free_after += would_free


def result_text(result: Result, dry_run: bool) -> str:
    lines = [f"free space on {result.path}: {human(result.free_before)}, required: {human(result.required)}"]
    if dry_run:
        if result.plan:
            lines.append("would remove, least recently used first:")
        elif not result.met and not result.build_cache:
            lines.append("no image that a build made can be removed")
        for candidate in result.plan:
            note = " (other tags keep the image: frees nothing)" if candidate.keeps_other_tags else ""
            lines.append(f"  {', '.join(candidate.references)}  {human(candidate.size)}  last used "
                         f"{candidate.last_used_at:%Y-%m-%d %H:%M}{note}")
        if result.build_cache:
            lines.append(f"then prune BuildKit's build cache: about {human(result.build_cache['would_free'])} of "
                         f"{human(result.build_cache['reclaimable'])} that can go")
    else:
        images = [item for item in result.removed if item.get("kind") != "build cache"]
        lines.append(f"removed {len(images)} image(s); free space now {human(result.free_after)}")
        lines.extend(f"  pruned BuildKit's build cache: {human(item['size'])}" for item in result.removed
                     if item.get("kind") == "build cache")
        lines.extend(f"  error: {error}" for error in result.errors)
    lines.extend(f"  kept {', '.join(item['references'])}: {item['reason']}" for item in result.kept)
    if result.met:
        lines.append("requirement met" + (" (dry run: nothing was changed)" if dry_run else ""))
    else:
        lines.append(f"cannot free enough: short by {human(result.shortfall)} "
                     f"({human(result.required)} required)" + (" (dry run: nothing was changed)" if dry_run else ""))
    return "\n".join(lines)
