"""Agent clean-up (Free Disk Space): remove images builds left on a build host, least recently used first.

Only images that builds on the agent created or pulled (AgentImage) are candidates; an image that
any container uses, running or stopped, is never removed; an image no build made stays. Free
space is measured on the volume holding the agent's Docker data path and re-read after each
removal, which stops as soon as the requirement is met.
"""

import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from .docker.daemon import DaemonError, daemon_client
from .models import Agent, AgentCleanup, AgentImage

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
# More than any disk holds (1 EiB), and well inside the BigIntegerField that records it: a larger
# requirement would remove every image and then fail to save its own record.
MAX_SIZE = 2 ** 60


class AgentCleanupError(Exception):
    """The clean-up cannot run (bad size, data path missing, daemon unreachable); nothing was removed."""


def parse_size(text: str) -> int:
    """'500M', '20G', '1T', '1.5G' or bytes; binary units (1G = 1024³ bytes); 1 byte to MAX_SIZE."""
    match = _SIZE_RE.match(text or "")
    if not match:
        raise AgentCleanupError(f"'{text}' is not a size: use a number with K, M, G or T (like 500M, 20G, 1T)")
    # Decimal, not float: a number too long for a float would be infinity, which int() cannot take.
    size = int(Decimal(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1:
        raise AgentCleanupError(f"'{text}' is no space at all: give a size of at least 1 byte (like 500M, 20G, 1T)")
    if size > MAX_SIZE:
        raise AgentCleanupError(f"'{text}' is more than any disk holds: at most {MAX_SIZE // _UNITS['T']}T "
                                f"({MAX_SIZE} bytes)")
    return size


def human(size: int | None) -> str:
    if size is None:
        return "—"
    for unit in ("T", "G", "M", "K"):
        if abs(size) >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"


def free_bytes(agent: Agent) -> tuple[str, int]:
    """(data path, free bytes on its volume); a path that does not exist names the setting to fix."""
    path, origin = agent.data_path_and_origin()
    if not os.path.isdir(path):
        raise AgentCleanupError(f"the Docker data path {path} of agent {agent} does not exist; it comes from {origin}")
    return path, shutil.disk_usage(path).free


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


def plan_candidates(agent: Agent, client) -> list[Candidate]:
    """Tracked images still on the daemon and used by no container, least recently used first."""
    # Plain tuples, not model instances: an old agent tracks thousands of references.
    tracked: dict[str, datetime] = {}  # reference -> its last use
    for reference, used in AgentImage.objects.filter(agent=agent).order_by().values_list("reference", "last_used_at"):
        tracked[reference] = max(used, tracked.get(reference, used))
    # The list endpoints' summaries, not client.containers.list() / client.images.list(), which inspect
    # each container and image (one request each). A container summary's ImageID is inspect's Image;
    # an image summary has the same Id, RepoTags and Size as inspect, except that older daemons list an
    # untagged image's RepoTags as ["<none>:<none>"] (inspect: []).
    in_use = {c.get("ImageID") for c in client.api.containers(all=True)}
    images: dict[str, Candidate] = {}
    for summary in client.api.images():
        image_id = summary["Id"]
        tags = [t for t in summary.get("RepoTags") or [] if t != "<none>:<none>"]
        ours = [t for t in tags if t in tracked]
        if image_id in tracked:
            ours.append(image_id)
        if not ours or image_id in in_use:
            continue
        last_used = max(tracked[ref] for ref in ours)
        others = [t for t in tags if t not in tracked]
        images[image_id] = Candidate(image_id=image_id, references=ours, size=int(summary.get("Size") or 0),
                                     last_used_at=last_used, keeps_other_tags=bool(others))
    return sorted(images.values(), key=lambda c: (c.last_used_at, c.image_id))


def free_disk_space(agent: Agent, required: int, *, dry_run: bool = False, reason: str = "", progress=None) -> Result:
    """Removes candidates until `required` bytes are free; records the run unless it is a dry run."""
    say = progress or (lambda text: None)
    path, free = free_bytes(agent)
    result = Result(path=path, required=required, free_before=free, free_after=free)
    try:
        client = daemon_client(agent.effective_docker_host)
    except DaemonError as exc:
        raise AgentCleanupError(str(exc)) from None
    try:
        candidates = plan_candidates(agent, client)
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
            before, result.free_after = result.free_after, free_bytes(agent)[1]
            result.removed.append({"image": candidate.image_id, "references": candidate.references,
                                   "size": candidate.size, "freed": max(result.free_after - before, 0)})
            say(f"removed {', '.join(candidate.references)} ({human(candidate.size)}); free now "
                f"{human(result.free_after)}")
        AgentImage.objects.filter(agent=agent, reference__in=[r for item in result.removed
                                                              for r in item["references"]]).delete()
    finally:
        client.close()
    AgentCleanup.objects.create(
        agent=agent, at=timezone.now(), reason=reason or "free_disk_space", data_path=path, required_bytes=required,
        free_before=result.free_before, free_after=result.free_after,
        bytes_reclaimed=max(result.free_after - result.free_before, 0), removed=result.removed, met=result.met,
    )
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
