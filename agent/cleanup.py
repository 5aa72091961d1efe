"""Free Disk Space on the agent's host: remove images builds left, least recently used first.

Only images that builds on this agent created or pulled are candidates (the server tracks them
from the builds' operations and hands the list over); an image that any container uses, running
or stopped, is never removed; an image no build made stays. Free space is measured on the
volume holding the Docker data path and re-read after each removal, which stops as soon as the
requirement is met.
"""

import ntpath
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from .protocol import MAX_SIZE, TrackedImage

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


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


@dataclass
class Candidate:
    image_id: str
    references: list[str]  # the tracked references that point to it (what is removed)
    size: int
    last_used_at: datetime
    keeps_other_tags: bool  # other tags (not from builds) keep the image: removing ours frees nothing


@dataclass
class Result:
    path: str
    required: int
    free_before: int
    free_after: int
    plan: list[Candidate] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.free_after >= self.required

    @property
    def shortfall(self) -> int:
        return max(self.required - self.free_after, 0)


def plan_candidates(client, tracked: list[TrackedImage]) -> list[Candidate]:
    """Tracked images still on the daemon and used by no container, least recently used first."""
    last_use: dict[str, datetime] = {}
    for image in tracked:
        last_use[image.reference] = max(image.last_used_at, last_use.get(image.reference, image.last_used_at))
    # The list endpoints' summaries, not client.containers.list() / client.images.list(), which inspect
    # each container and image (one request each). A container summary's ImageID is inspect's Image;
    # an image summary has the same Id, RepoTags and Size as inspect, except that older daemons list an
    # untagged image's RepoTags as ["<none>:<none>"] (inspect: []).
    in_use = {c.get("ImageID") for c in client.api.containers(all=True)}
    images: dict[str, Candidate] = {}
    for summary in client.api.images():
        image_id = summary["Id"]
        tags = [t for t in summary.get("RepoTags") or [] if t != "<none>:<none>"]
        ours = [t for t in tags if t in last_use]
        if image_id in last_use:
            ours.append(image_id)
        if not ours or image_id in in_use:
            continue
        others = [t for t in tags if t not in last_use]
        images[image_id] = Candidate(image_id=image_id, references=ours, size=int(summary.get("Size") or 0),
                                     last_used_at=max(last_use[ref] for ref in ours), keeps_other_tags=bool(others))
    return sorted(images.values(), key=lambda c: (c.last_used_at, c.image_id))


def images_remove_until_free(client, tracked: list[TrackedImage], required: int, path: str, origin: str, *,
                             dry_run: bool = False, progress=None) -> Result:
    """Removes candidates until `required` bytes are free on the volume of `path`."""
    say = progress or (lambda text: None)
    free = free_bytes(path, origin)
    result = Result(path=path, required=required, free_before=free, free_after=free)
    candidates = plan_candidates(client, tracked)
    if dry_run:
        # The images that would go, until the estimate meets the requirement.
        for candidate in candidates:
            if result.free_after >= required:
                break
            result.plan.append(candidate)
            result.free_after += 0 if candidate.keeps_other_tags else candidate.size
        return result
    result.plan = candidates
    for candidate in candidates:
        if result.free_after >= required:
            break
        for reference in candidate.references:
            try:
                client.images.remove(reference, noprune=False)
            except Exception as exc:  # noqa: BLE001 - docker's errors: report and go on with the next
                result.errors.append(f"{reference}: {getattr(exc, 'explanation', None) or exc}")
        before, result.free_after = result.free_after, free_bytes(path, origin)
        result.removed.append({"image": candidate.image_id, "references": candidate.references,
                               "size": candidate.size, "freed": max(result.free_after - before, 0)})
        say(f"removed {', '.join(candidate.references)} ({human(candidate.size)}); free now {human(result.free_after)}")
    return result


def result_text(result: Result, dry_run: bool) -> str:
    lines = [f"free space on {result.path}: {human(result.free_before)}, required: {human(result.required)}"]
    if dry_run:
        if result.plan:
            lines.append("would remove, least recently used first:")
        elif not result.met:
            lines.append("no image that a build made can be removed")
        for candidate in result.plan:
            note = " (other tags keep the image: frees nothing)" if candidate.keeps_other_tags else ""
            lines.append(f"  {', '.join(candidate.references)}  {human(candidate.size)}  last used "
                         f"{candidate.last_used_at:%Y-%m-%d %H:%M}{note}")
    else:
        lines.append(f"removed {len(result.removed)} image(s); free space now {human(result.free_after)}")
        lines.extend(f"  error: {error}" for error in result.errors)
    if result.met:
        lines.append("requirement met" + (" (dry run: nothing was changed)" if dry_run else ""))
    else:
        lines.append(f"cannot free enough: short by {human(result.shortfall)} "
                     f"({human(result.required)} required)" + (" (dry run: nothing was changed)" if dry_run else ""))
    return "\n".join(lines)
