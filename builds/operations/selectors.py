"""Reads about the Docker operations of builds: the Docker Info of a build (the admin's tab, the API)."""

import re

from django.db.models import Count
from django.utils import timezone

from agent.references import DOCKER_HUB, registry_and_repository, registry_identity

from ..models import Agent, Build, DockerOperation, LoginConnection, PushedImage, UnattributedOperation

Action = DockerOperation.Action
# Operations that give an image a name: its ID (in their attributes) is then known by that reference.
NAMING_ACTIONS = (Action.PULL, Action.BUILD, Action.TAG, Action.IMPORT, Action.LOAD)
_SHORT_ID, _WHOLE_ID = re.compile(r"[0-9a-f]{12,64}"), re.compile(r"[0-9a-f]{64}")


def image_reference(image: str, tag: str) -> str:
    """The whole reference of an operation's image and tag: 'busybox:1', or an image ID 'sha256:<hex>'.

    (An ID that events stored split, as image 'sha256' and a 64-character tag, comes back whole.)
    """
    return f"{image}:{tag}" if tag else image


def is_image_id(reference: str) -> bool:
    return reference.startswith("sha256:") or bool(_WHOLE_ID.fullmatch(reference))


def image_names(build: Build) -> dict[str, str]:
    """Image ID → the first reference the build's own operations (pull, build, tag, import, load) gave it."""
    names: dict[str, str] = {}
    rows = (DockerOperation.objects.filter(build=build, action__in=NAMING_ACTIONS, attributes__has_key="image_id")
            .exclude(image="").order_by("time_nano", "pk").values_list("attributes__image_id", "image", "tag"))
    for image_id, image, tag in rows:
        if isinstance(image_id, str) and image_id:
            names.setdefault(image_id, image_reference(image, tag))
    return names


def image_name(reference: str, names: dict[str, str]) -> str:
    """An image ID (whole, or the short one a person typed) by the name the build gave it; else as it is."""
    if reference.startswith("sha256:"):
        return names.get(reference, reference)
    if _SHORT_ID.fullmatch(reference):  # a short ID, or a name all of hex digits: only an ID of the build resolves
        return next((name for image_id, name in names.items() if image_id[7:].startswith(reference)), reference)
    return reference


def docker_info_summary(build: Build) -> dict:
    """What a build did with Docker, in a handful of queries however many operations it has."""
    return docker_info(build)["summary"]


def docker_info(build: Build) -> dict:
    """The Docker Info of a build in a handful of queries however many operations it has: `summary` (the API's),
    `images` (each image pulled or built, with its digest and ID where known), `names` (image ID → the
    reference the build's operations gave it) and `pushed_count` (its pushed images)."""
    operations = DockerOperation.objects.filter(build=build)
    counts = dict(operations.values_list("action").annotate(n=Count("pk")).order_by())
    names = image_names(build)
    images = _images(operations, names)
    pulls = {(i["image"], i["tag"]) for i in images if i["action"] == Action.PULL}
    pulled = sorted(i["reference"] for i in images if i["action"] == Action.PULL)
    built = sorted(i["reference"] for i in images if i["action"] == Action.BUILD)
    pushed_rows = PushedImage.objects.filter(build=build).values_list("registry", "repository", "tag")
    pushed_rows = list(pushed_rows)
    pushed = sorted({image_reference(f"{registry}/{repository}", tag) for registry, repository, tag in pushed_rows})
    starts: dict[str, list[int]] = {}
    for container_id, nano in operations.filter(action=Action.START).values_list("container_id", "time_nano"):
        starts.setdefault(container_id, []).append(nano)
    containers, container_nanos = [], 0
    for row in operations.filter(action=Action.DIE).values("container_id", "container_name", "image", "tag",
                                                      "exit_code", "time_nano"):
        started = max((n for n in starts.get(row["container_id"], []) if n <= row["time_nano"]), default=None)
        seconds = (row["time_nano"] - started) / 1e9 if started is not None else None
        container_nanos += (row["time_nano"] - started) if started is not None else 0
        created_from = image_reference(row["image"], row["tag"])
        containers.append({
            # By the name the build gave its image; `image_id` keeps the ID it was created from, if it was one.
            "id": row["container_id"], "name": row["container_name"], "image": image_name(created_from, names),
            "image_id": created_from if is_image_id(created_from) else "",
            "exit_code": row["exit_code"], "seconds": round(seconds, 3) if seconds is not None else None,
            "failed": row["exit_code"] not in (0, None),
        })
    # Compared by identity: a build logged in to Docker Hub as index.docker.io pulled busybox from it.
    logged_in = {registry_identity(registry) for registry in build.logged_in_registries or []}
    warnings = list(build.warnings or [])
    for image, tag in sorted(pulls):
        registry, _ = registry_and_repository(image)
        if registry not in logged_in:
            hub = " (anonymous pulls get Docker Hub's lower rate limit)" if registry == DOCKER_HUB else ""
            warnings.append(f"{image_reference(image, tag)} was pulled anonymously: the build was not logged in to "
                            f"{registry}{hub}")
    warnings.extend(_uncertain_owner_warnings(build))
    summary = {
        "operation_count": sum(counts.values()),
        "counts": counts,
        "images_pulled": pulled,
        "images_built": built,
        "images_pushed": pushed,
        # Failed containers first (each group in time order): what a person looks for comes first.
        "containers": sorted(containers, key=lambda c: not c["failed"]),
        "containers_failed": sum(1 for c in containers if c["failed"]),
        "seconds_in_containers": round(container_nanos / 1e9, 3),
        "warnings": warnings,
    }
    return {"summary": summary, "images": [{k: v for k, v in i.items() if k not in ("image", "tag")} for i in images],
            "names": names, "pushed_count": len(pushed_rows)}


def _images(operations, names: dict[str, str]) -> list[dict]:
    """Each image pulled or built, once, in the order first done: its reference, digest where an operation
    recorded one (a pull by digest) and ID where the build's operations named it."""
    ids = {name: image_id for image_id, name in reversed(names.items())}
    images: dict[tuple[str, str], dict] = {}
    rows = (operations.filter(action__in=(Action.PULL, Action.BUILD)).order_by("time_nano", "pk")
            .values_list("action", "image", "tag", "digest"))
    for action, image, tag, digest in rows:
        reference = image_reference(image, tag)
        row = images.setdefault((action, reference), {"action": action, "reference": reference, "image": image,
                                                      "tag": tag, "digest": "", "image_id": ids.get(reference, "")})
        row["digest"] = row["digest"] or digest
    return list(images.values())


UNCERTAIN_WARNINGS = 20  # pushed images of uncertain owner named one by one in the warnings; the rest counted


def _uncertain_owner_warnings(build: Build) -> list[str]:
    """Pushed images whose owner is uncertain (pushed while other builds ran on the daemon), with why."""
    uncertain = PushedImage.objects.filter(build=build, owner_uncertain=True).order_by("pushed_at", "pk")
    images = list(uncertain.only("registry", "repository", "tag", "owner_note")[:UNCERTAIN_WARNINGS + 1])
    warnings = [
        f"{image_reference(f'{image.registry}/{image.repository}', image.tag)}: owner uncertain, "
        f"{image.owner_note or 'pushed while other builds ran on the same daemon'}; clean-up never deletes it "
        "until an admin settles its owner"
        for image in images[:UNCERTAIN_WARNINGS]
    ]
    if len(images) > UNCERTAIN_WARNINGS:
        more = uncertain.count() - UNCERTAIN_WARNINGS
        warnings.append(f"{more} more pushed image(s) of uncertain owner: see the pushed images")
    return warnings


def containers_shown(containers: list[dict], limit: int) -> list[dict]:
    """A long list cut to `limit`, never cutting a failed container (they come first)."""
    failed = [c for c in containers if c["failed"]]
    return failed + [c for c in containers if not c["failed"]][:max(limit - len(failed), 0)]


def build_operations(build: Build, action: str = "", search: str = ""):
    """The build's operations in time order, filtered by action and by a text in the image name."""
    operations = DockerOperation.objects.filter(build=build).order_by("time_nano", "pk")
    if action:
        operations = operations.filter(action=action)
    if search:
        operations = operations.filter(image__icontains=search)
    return operations


def build_pushed_images(build: Build):
    """The images the build pushed, in the order it pushed them."""
    return build.pushed_images.order_by("pushed_at", "pk")


def build_operations_shown(operations, names: dict[str, str]) -> list:
    """Operations of a page, each with `reference` (its image, whole) and `name` (an ID by its build's name)."""
    operations = list(operations)
    for operation in operations:
        operation.reference = image_reference(operation.image, operation.tag)
        operation.name = image_name(operation.reference, names)
    return operations


def build_duration(build: Build, now=None):
    """How long the build ran (a timedelta), so far when it runs; None when that is not known."""
    if build.finished_at is not None:
        return build.finished_at - build.started_at
    if build.is_running:
        return (now or timezone.now()) - build.started_at
    return None


def _mentions(message: str, connection) -> bool:
    return f"connection '{connection}'" in message


def build_logins(build: Build) -> list[dict]:
    """The registries the build logged in to, or tried to: each login of its configuration (its connection,
    registry, whether optional) with the outcome the build recorded, then any registry it was logged in to that
    its configuration no longer lists.

    outcome: "logged in"; "failed" (`message`: why, from the build's error or warnings); "not used" (the build
    did not run: its daemon, its agent or another, required login failed); "pending" (running, not reported yet); "not
    logged in" (no record of it: the configuration's logins changed since, or the build is older than them).
    """
    logged_in = {registry_identity(registry): registry for registry in build.logged_in_registries or []}
    unlisted = dict(logged_in)
    messages = [m for m in [build.error, *(build.warnings or [])] if m]
    logins = []
    for login in LoginConnection.objects.filter(configuration_id=build.configuration_id).select_related(
            "connection__project"):
        connection = login.connection
        identity = registry_identity(connection.registry_address)
        failure = next((m for m in messages if _mentions(m, connection)), "")
        if identity in logged_in:
            outcome = "logged in"
            unlisted.pop(identity, None)
        elif failure:
            outcome = "failed"
        elif build.status == Build.Status.ERROR:
            outcome = "not used"
        elif build.is_running and not build.docker_config:
            outcome = "pending"
        else:
            outcome = "not logged in"
        logins.append({"connection": connection, "registry": connection.registry_address or DOCKER_HUB,
                       "optional": login.optional, "outcome": outcome, "message": failure})
    for registry in unlisted.values():
        logins.append({"connection": None, "registry": registry, "optional": None, "outcome": "logged in",
                       "message": "its configuration no longer logs in to it"})
    return logins


def docker_info_empty_reason(build: Build) -> dict | None:
    """Why a build has no Docker Info (no operation, no pushed image): `why`, one line, and `detail`, the
    build's own words (its error) where it has them. None when it has some."""
    if DockerOperation.objects.filter(build=build).exists() or PushedImage.objects.filter(build=build).exists():
        return None
    error = build.error
    if build.status == Build.Status.ERROR:
        if "login with connection" in error:
            why = "A registry login failed, so the build's command never ran."
        elif "does not answer" in error or "Docker daemon" in error:
            why = "The agent's Docker daemon could not be reached, so the build's command never ran."
        elif "not connected" in error or "did not log it in" in error:
            why = "The build's agent did not log it in, so its command never ran."
        else:
            why = "The build did not run."
        return {"kind": "error", "why": why, "detail": error}
    if build.status == Build.Status.LOST:
        return {"kind": "lost", "why": "The build was lost: it ended without its agent finishing it, and no Docker "
                                      "operation was recorded.", "detail": error}
    if build.is_running:
        agent = build.agent
        if agent.daemon_ok is False:
            return {"kind": "daemon", "why": f"Agent {agent}'s Docker daemon does not answer: nothing can be "
                                            "recorded until it does.", "detail": agent.daemon_error}
        return {"kind": "running", "why": "The build is running and has recorded no Docker operation yet: they show "
                                          "here as its agent sends them.", "detail": ""}
    return {"kind": "none", "why": "The build finished without any Docker operation: its command did not use the "
                                   "Docker daemon of its agent.", "detail": ""}


def build_attribution(build: Build) -> str:
    """How the build's Docker operations were told from other builds', for people; '' when its agent did not say
    (an older agent, or not logged in yet)."""
    if build.attribution == Build.Attribution.EXACT:
        return "exact (its own Docker endpoint)"
    if build.attribution == Build.Attribution.TIME:
        return f"time-based: {build.attribution_note}" if build.attribution_note else "time-based"
    return ""


def agent_unattributed(agent: Agent, limit: int) -> tuple[int, list[dict]]:
    """How many Docker operations of the agent's daemon no build asked for are kept, and the newest `limit`
    of them: `time`, `action`, `raw_action`, `what` (a container's name or id, of the image it runs; else the
    image:tag)."""
    operations = UnattributedOperation.objects.filter(agent=agent)
    newest = operations.order_by("-time_nano", "-pk").values(
        "time", "action", "raw_action", "image", "tag", "container_name", "container_id")[:limit]
    rows = []
    for row in newest:
        image, container = image_reference(row["image"], row["tag"]), row["container_name"] or row["container_id"]
        what = f"{container} ({image})" if container and image else container or image
        rows.append({"time": row["time"], "action": row["action"], "raw_action": row["raw_action"], "what": what})
    return operations.count(), rows
