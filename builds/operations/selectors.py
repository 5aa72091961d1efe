"""Reads about the Docker operations of builds: the Docker Info of a build (the admin's tab, the API)."""

from django.db.models import Count

from agent.references import DOCKER_HUB, registry_and_repository, registry_identity

from ..models import Build, DockerOperation, PushedImage

Action = DockerOperation.Action


def _reference(image: str, tag: str) -> str:
    return f"{image}:{tag}" if tag else image


def docker_info_summary(build: Build) -> dict:
    """What a build did with Docker, in a handful of queries however many operations it has."""
    operations = DockerOperation.objects.filter(build=build)
    counts = dict(operations.values_list("action").annotate(n=Count("pk")).order_by())
    pulls = set(operations.filter(action=Action.PULL).values_list("image", "tag"))
    pulled = sorted(_reference(i, t) for i, t in pulls)
    built = sorted({_reference(i, t) for i, t in operations.filter(action=Action.BUILD).values_list("image", "tag")})
    pushed = sorted({_reference(f"{p.registry}/{p.repository}", p.tag)
                     for p in PushedImage.objects.filter(build=build).only("registry", "repository", "tag")})
    starts: dict[str, list[int]] = {}
    for container_id, nano in operations.filter(action=Action.START).values_list("container_id", "time_nano"):
        starts.setdefault(container_id, []).append(nano)
    containers, container_nanos = [], 0
    for row in operations.filter(action=Action.DIE).values("container_id", "container_name", "image", "tag",
                                                      "exit_code", "time_nano"):
        started = max((n for n in starts.get(row["container_id"], []) if n <= row["time_nano"]), default=None)
        seconds = (row["time_nano"] - started) / 1e9 if started is not None else None
        container_nanos += (row["time_nano"] - started) if started is not None else 0
        containers.append({
            "id": row["container_id"], "name": row["container_name"], "image": _reference(row["image"], row["tag"]),
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
            warnings.append(f"{_reference(image, tag)} was pulled anonymously: the build was not logged in to "
                            f"{registry}{hub}")
    warnings.extend(_uncertain_owner_warnings(build))
    return {
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


UNCERTAIN_WARNINGS = 20  # pushed images of uncertain owner named one by one in the warnings; the rest counted


def _uncertain_owner_warnings(build: Build) -> list[str]:
    """Pushed images whose owner is uncertain (pushed while other builds ran on the daemon), with why."""
    uncertain = PushedImage.objects.filter(build=build, owner_uncertain=True).order_by("pushed_at", "pk")
    images = list(uncertain.only("registry", "repository", "tag", "owner_note")[:UNCERTAIN_WARNINGS + 1])
    warnings = [
        f"{_reference(f'{image.registry}/{image.repository}', image.tag)}: owner uncertain, "
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
