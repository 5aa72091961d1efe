"""Server clean-up: retention rules delete old builds; the images they pushed are deleted from registries.

Deleting a build turns its pushed images into pending deletions (tombstones that outlive the
build). Deleting them is a state machine on PushedImage: rows are claimed by a conditional UPDATE
before any registry call, then end `deleted`, `kept` (with the reason it was not safe), `failed`
(with the registry's answer; retryable from the admin), or stay `pending` with their last error
and a later `next_attempt_at` when the registry was unreachable, answered 5xx or 429.

Deleting a manifest by digest deletes every tag on it, so before deleting a digest: a digest a
retained build also pushed is kept; a digest that a tag not pushed by a deleted build points to
(`latest` set by hand) is kept on a v2 registry, and on ECR only the deleted builds' own tags are
removed. Manifest lists and OCI indexes are deleted as a whole by the digest that was pushed.
"""

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from connections.models import Connection, Project
from connections.registries import Deletion, DeletionResult, ImageRef, Registry, RegistryError, open_registry
from connections.selectors import connection_nearest

from ..models import Build, BuildConfiguration, CleanupRun, PushedImage

log = logging.getLogger(__name__)

CONCURRENCY = 8  # requests at a time to one registry
CLAIM_FOR = timedelta(minutes=15)
MAX_ATTEMPTS = 10
DOCKER_HUB_REFUSES = (
    "Docker Hub refuses to delete manifests through the registry API (HTTP 405); delete the tag in Docker Hub "
    "itself (web UI or Hub API)"
)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: 1, 2, 4 ... minutes, at most 6 hours."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 360))


# --- Retention ---------------------------------------------------------------------------------

@dataclass
class PlannedImage:
    image: PushedImage
    connection: Connection | None
    problem: str = ""


@dataclass
class PlannedBuild:
    build: Build
    reason: str
    images: list[PlannedImage] = field(default_factory=list)


def retention_plan(now=None) -> list[PlannedBuild]:
    """Builds the retention rules delete: kept while either rule keeps them; never running or pinned ones."""
    now = now or timezone.now()
    plan = []
    configurations = BuildConfiguration.objects.filter(
        Q(keep_last__isnull=False) | Q(keep_days__isnull=False)).select_related("project")
    for configuration in configurations:
        builds = list(configuration.builds.order_by("-started_at", "-number").select_related("agent"))
        kept_by_count = {b.pk for b in builds[:configuration.keep_last]} if configuration.keep_last else set()
        for build in builds:
            if build.is_running or build.pinned or build.pk in kept_by_count:
                continue
            if configuration.keep_days and build.started_at >= now - timedelta(days=configuration.keep_days):
                continue
            rules = []
            if configuration.keep_last:
                rules.append(f"not among the last {configuration.keep_last}")
            if configuration.keep_days:
                rules.append(f"older than {configuration.keep_days} days")
            build.configuration = configuration
            entry = PlannedBuild(build=build, reason=" and ".join(rules))
            if configuration.cleanup_pushed_images:
                for image in build.pushed_images.filter(cleanup_status=PushedImage.CleanupStatus.KEPT):
                    connection = find_connection(configuration.project, image.registry)
                    entry.images.append(PlannedImage(image=image, connection=connection, problem=(
                        "" if connection else no_connection_message(configuration.project, image.registry))))
            plan.append(entry)
    return plan


def find_connection(project: Project, registry: str) -> Connection | None:
    """The connection for `registry` of the project or, nearest first, of its ancestors; never another's."""
    return connection_nearest(project, lambda connection: connection.registry_address == registry)


def no_connection_message(project: Project, registry: str) -> str:
    return f"no connection for {registry} in project '{project.ident}' or its ancestors"


def plan_text(plan: list[PlannedBuild]) -> str:
    lines = []
    for entry in plan:
        lines.append(f"build {entry.build} (started {entry.build.started_at:%Y-%m-%d %H:%M}): {entry.reason}")
        for planned in entry.images:
            via = f"with connection {planned.connection}" if planned.connection else f"impossible: {planned.problem}"
            lines.append(f"  delete {planned.image.reference} from {planned.image.registry} {via}")
    images = sum(len(entry.images) for entry in plan)
    lines.append(f"{len(plan)} build(s) to delete, {images} pushed image(s) to delete from their registries")
    return "\n".join(lines)


# --- Running a clean-up ------------------------------------------------------------------------

def cleanup_run(*, trigger: str = CleanupRun.Trigger.COMMAND, progress=None) -> CleanupRun:
    """Applies retention, deletes the builds, then the pending images; records the run."""
    say = progress or (lambda text: None)
    run = CleanupRun.objects.create(trigger=trigger, started_at=timezone.now())
    plan = retention_plan()
    for number, entry in enumerate(plan, start=1):
        say(f"[{number}/{len(plan)}] deleting build {entry.build} ({entry.reason})")
        build_delete(entry.build)
        run.builds_deleted += 1
        run.details.append({"build": str(entry.build), "outcome": "deleted", "reason": entry.reason})
    run.save(update_fields=["builds_deleted", "details"])
    pending_deletions_process(run=run, progress=say)
    run.finished_at = timezone.now()
    run.save()
    return run


@transaction.atomic
def build_delete(build: Build) -> None:
    """Deletes a build; its pushed images become pending deletions when its configuration asks for it."""
    now = timezone.now()
    images = PushedImage.objects.filter(build=build, cleanup_status=PushedImage.CleanupStatus.KEPT)
    if build.configuration.cleanup_pushed_images:
        images.update(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now, cleanup_updated_at=now,
                      cleanup_reason=f"build {build} was deleted by retention")
    else:
        images.update(cleanup_reason=f"build {build} was deleted; its configuration keeps pushed images",
                      cleanup_updated_at=now)
    build.delete()  # operations go with it; pushed images stay as tombstones (build set to NULL)


# What a deletion's result makes of a pushed image; one to retry stays pending ("retrying" in a run's tally).
_STATUS = {
    DeletionResult.DELETED: PushedImage.CleanupStatus.DELETED,
    DeletionResult.GONE: PushedImage.CleanupStatus.DELETED,
    DeletionResult.KEPT: PushedImage.CleanupStatus.KEPT,
    DeletionResult.FAILED: PushedImage.CleanupStatus.FAILED,
}


def pending_deletions_process(*, run: CleanupRun | None = None, progress=None, now=None) -> dict:
    """Deletes every pending image whose time has come, registry by registry, with bounded concurrency."""
    say = progress or (lambda text: None)
    images = _claim(now or timezone.now())
    tally = defaultdict(int)
    groups: dict[tuple, list[PushedImage]] = defaultdict(list)
    for image in images:
        groups[(image.project_id, image.registry)].append(image)
    for (project_id, registry), group in groups.items():
        project = Project.objects.get(pk=project_id)
        connection = find_connection(project, registry)
        say(f"deleting {len(group)} image(s) from {registry}"
            + (f" with connection {connection}" if connection else ""))
        outcomes = _delete_group(connection, project, registry, group)
        for image in group:
            outcome = outcomes[image.pk]
            _record(image, outcome)
            key = "retrying" if outcome.result == DeletionResult.RETRY else _STATUS[outcome.result]
            tally[key] += 1
            if run is not None:
                run.details.append({"image": image.reference, "outcome": key, "reason": outcome.reason})
            say(f"  {image.reference}: {key}" + (f" ({outcome.reason})" if outcome.reason else ""))
    if run is not None:
        run.images_deleted += tally["deleted"]
        run.images_kept += tally["kept"]
        run.images_failed += tally["failed"]
        run.images_retrying += tally["retrying"]
    return dict(tally)


def _claim(now) -> list[PushedImage]:
    token = str(uuid.uuid4())
    due = PushedImage.objects.filter(
        cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at__lte=now,
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    PushedImage.objects.filter(pk__in=list(due.values_list("pk", flat=True))).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    ).update(claim=token, claimed_until=now + CLAIM_FOR)
    return list(PushedImage.objects.filter(claim=token, cleanup_status=PushedImage.CleanupStatus.PENDING))


def _record(image: PushedImage, outcome: Deletion) -> None:
    now = timezone.now()
    fields = {"claim": "", "claimed_until": None, "cleanup_updated_at": now, "cleanup_reason": outcome.reason}
    if outcome.result == DeletionResult.RETRY:
        attempts = image.cleanup_attempts + 1
        if attempts >= MAX_ATTEMPTS:
            fields.update(cleanup_status=PushedImage.CleanupStatus.FAILED, cleanup_attempts=attempts,
                          cleanup_reason=f"gave up after {attempts} attempts; last error: {outcome.reason}")
        else:
            fields.update(cleanup_attempts=attempts, next_attempt_at=now + retry_delay(attempts))
    else:
        fields.update(cleanup_status=_STATUS[outcome.result], cleanup_attempts=image.cleanup_attempts + 1)
    PushedImage.objects.filter(pk=image.pk, claim=image.claim).update(**fields)


def _delete_group(connection, project, registry, images) -> dict[int, Deletion]:
    if connection is None:
        return {i.pk: Deletion.failed(no_connection_message(project, registry)) for i in images}
    if connection.is_docker_hub:
        return {i.pk: Deletion.failed(DOCKER_HUB_REFUSES) for i in images}
    try:
        with open_registry(connection, session_name="dockersupport-cleanup", concurrency=CONCURRENCY) as session:
            if session.deletes_by_tag:
                return _delete_own_tags(session, images)
            return _delete_digests(session, images)
    except RegistryError as exc:  # credentials could not even be obtained, or (ECR) AWS refused a call
        failure = Deletion.from_error(exc, about=f"connection '{connection}'")
        return {i.pk: failure for i in images}


def _retained_digests(images) -> dict[tuple, str]:
    """(registry, repository, digest) also pushed by a build that still exists → that build's name."""
    digests = {i.digest for i in images if i.digest}
    retained = {}
    rows = PushedImage.objects.filter(build__isnull=False, digest__in=digests).select_related("build__configuration")
    for row in rows:
        retained[(row.registry, row.repository, row.digest)] = str(row.build)
    return retained


def _owned_tags(images) -> dict[tuple, set[str]]:
    """Tags pushed by deleted builds (tombstones), per (registry, repository, digest)."""
    owned = defaultdict(set)
    digests = {i.digest for i in images if i.digest}
    for row in PushedImage.objects.filter(build__isnull=True, digest__in=digests).values("registry", "repository",
                                                                                             "digest", "tag"):
        owned[(row["registry"], row["repository"], row["digest"])].add(row["tag"])
    return owned


def _by_repository(images) -> dict[str, list[PushedImage]]:
    groups = defaultdict(list)
    for image in images:
        groups[image.repository].append(image)
    return groups


def _kept_for(build_name: str) -> Deletion:
    return Deletion.kept(f"build {build_name}, which is kept, pushed the same digest")


def _delete_digests(registry: Registry, images) -> dict[int, Deletion]:
    """A registry that deletes a digest with every tag on it (v2): a digest another tag points to is kept.

    A registry's answer about one repository (or one image) decides for those images alone.
    """
    outcomes: dict[int, Deletion] = {}
    for image in images:  # pushed without a known digest: the one its tag resolves to
        if image.digest:
            continue
        try:
            resolved = registry.digest_of(image.repository, image.tag)
        except RegistryError as exc:
            outcomes[image.pk] = Deletion.from_error(exc)
            continue
        if resolved is None:
            outcomes[image.pk] = Deletion.gone("the tag is already gone from the registry")
        else:
            image.digest = resolved
    todo = [i for i in images if i.pk not in outcomes]
    retained, owned = _retained_digests(todo), _owned_tags(todo)
    for repository, group in _by_repository(todo).items():
        try:
            tags_by_digest = registry.tags_by_digest(repository)
        except RegistryError as exc:
            outcomes.update({i.pk: Deletion.from_error(exc) for i in group})
            continue
        wanted: dict[ImageRef, list[PushedImage]] = defaultdict(list)
        for image in group:
            key = (image.registry, image.repository, image.digest)
            if key in retained:
                outcomes[image.pk] = _kept_for(retained[key])
                continue
            foreign = sorted(tags_by_digest.get(image.digest, set()) - owned[key])
            if foreign:
                outcomes[image.pk] = Deletion.kept(
                    "tag " + ", ".join(f"'{t}'" for t in foreign) + " also points to this digest and was not pushed "
                    "by a deleted build; deleting the digest would delete it too")
                continue
            wanted[ImageRef(digest=image.digest)].append(image)
        for ref, outcome in registry.delete(repository, wanted).items():
            outcomes.update({i.pk: outcome for i in wanted[ref]})
    return outcomes


def _delete_own_tags(registry: Registry, images) -> dict[int, Deletion]:
    """A registry that removes one tag alone (ECR): where other tags point to the digest, only the deleted
    builds' own tags go.

    A RegistryError (AWS refused a call) is raised: it decides for every image of the registry.
    """
    outcomes: dict[int, Deletion] = {}
    retained, owned = _retained_digests(images), _owned_tags(images)
    for repository, group in _by_repository(images).items():
        tags_by_digest = registry.tags_by_digest(repository)
        wanted: dict[ImageRef, list[tuple[PushedImage, str]]] = defaultdict(list)  # with the reason once deleted
        for image in group:
            key = (image.registry, image.repository, image.digest)
            if key in retained:
                outcomes[image.pk] = _kept_for(retained[key])
                continue
            foreign = ", ".join(sorted(tags_by_digest.get(image.digest, set()) - owned[key]))
            if foreign and image.tag:
                wanted[ImageRef(tag=image.tag)].append(
                    (image, f"only tag '{image.tag}' was removed: tag(s) {foreign} still point to the digest"))
            elif foreign:
                outcomes[image.pk] = Deletion.kept(f"tag(s) {foreign} not pushed by a deleted build point to this "
                                                   "digest")
            else:
                wanted[ImageRef(digest=image.digest)].append((image, ""))
        for ref, outcome in registry.delete(repository, wanted).items():
            for image, reason in wanted[ref]:
                deleted = outcome.result == DeletionResult.DELETED
                outcomes[image.pk] = replace(outcome, reason=reason) if deleted and reason else outcome
    return outcomes


def pushed_images_retry(images) -> int:
    """Admin: failed or pending deletions are tried again at the next run."""
    now = timezone.now()
    return PushedImage.objects.filter(
        pk__in=[i.pk for i in images],
        cleanup_status__in=[PushedImage.CleanupStatus.FAILED, PushedImage.CleanupStatus.PENDING],
    ).update(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now, claim="", claimed_until=None)


def deletions_retry_due(now=None) -> dict:
    """Pending deletions whose backoff has passed are tried again, as a run of their own (periodic task).

    No run is recorded when none is due. Returns the run's tally.
    """
    now = now or timezone.now()
    due = PushedImage.objects.filter(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at__lte=now)
    if not due.exists():
        return {}
    run = CleanupRun.objects.create(trigger=CleanupRun.Trigger.RETRY, started_at=now)
    tally = pending_deletions_process(run=run, now=now)
    run.finished_at = timezone.now()
    run.save()
    return tally


def deletions_waiting(projects: list[int] | None = None) -> dict[str, int]:
    """Images of deleted builds pending deletion or whose deletion failed: how many of each (of `projects` only,
    when given)."""
    status = PushedImage.CleanupStatus
    waiting = PushedImage.objects.filter(build__isnull=True, cleanup_status__in=[status.PENDING, status.FAILED])
    if projects is not None:
        waiting = waiting.filter(project__in=projects)
    counts = dict(waiting.values_list("cleanup_status").annotate(n=Count("pk")).order_by())
    return {status.PENDING: counts.get(status.PENDING, 0), status.FAILED: counts.get(status.FAILED, 0)}
