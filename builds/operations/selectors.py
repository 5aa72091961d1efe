"""Reads about the Docker operations of builds: the Docker Info of a build (the admin's tab, the API)."""

from django.db.models import Count

from agent.references import registry_and_repository

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
    logged_in = set(build.logged_in_registries or [])
    warnings = list(build.warnings or [])
    for image, tag in sorted(pulls):
        registry, _ = registry_and_repository(image)
        if registry not in logged_in:
            hub = " (anonymous pulls get Docker Hub's lower rate limit)" if registry == "docker.io" else ""
            warnings.append(f"{_reference(image, tag)} was pulled anonymously: the build was not logged in to "
                            f"{registry}{hub}")
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
