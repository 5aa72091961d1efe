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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from connections.models import Connection, Project
from connections.registries import RegistryError, credentials_for
from connections.registries.v2 import RegistrySession, TransientRegistryError

from .models import Build, BuildConfiguration, CleanupRun, PushedImage

log = logging.getLogger(__name__)

CONCURRENCY = 8
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
    for owner in project.lineage():
        for connection in owner.connections.all():
            if connection.registry_address == registry:
                return connection
    return None


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


@dataclass
class _Outcome:
    status: str
    reason: str
    transient: bool = False


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
            key = "retrying" if outcome.transient else outcome.status
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


def _record(image: PushedImage, outcome: _Outcome) -> None:
    now = timezone.now()
    fields = {"claim": "", "claimed_until": None, "cleanup_updated_at": now, "cleanup_reason": outcome.reason}
    if outcome.transient:
        attempts = image.cleanup_attempts + 1
        if attempts >= MAX_ATTEMPTS:
            fields.update(cleanup_status=PushedImage.CleanupStatus.FAILED, cleanup_attempts=attempts,
                          cleanup_reason=f"gave up after {attempts} attempts; last error: {outcome.reason}")
        else:
            fields.update(cleanup_attempts=attempts, next_attempt_at=now + retry_delay(attempts))
    else:
        fields.update(cleanup_status=outcome.status, cleanup_attempts=image.cleanup_attempts + 1)
    PushedImage.objects.filter(pk=image.pk, claim=image.claim).update(**fields)


def _delete_group(connection, project, registry, images) -> dict[int, _Outcome]:
    if connection is None:
        return {i.pk: _Outcome("failed", no_connection_message(project, registry)) for i in images}
    if connection.is_docker_hub:
        return {i.pk: _Outcome("failed", DOCKER_HUB_REFUSES) for i in images}
    try:
        if connection.type == Connection.Type.AMAZON_ECR:
            return _delete_from_ecr(connection, images)
        return _delete_from_v2(connection, images)
    except RegistryError as exc:  # credentials could not even be obtained
        transient = isinstance(exc, TransientRegistryError)
        return {i.pk: _Outcome("failed", f"connection '{connection}': {exc}", transient) for i in images}


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


def _delete_from_v2(connection, images) -> dict[int, _Outcome]:
    credentials = credentials_for(connection, session_name="dockersupport-cleanup")
    session = RegistrySession(connection.registry or connection.registry_address, credentials.username,
                              credentials.password, pool_size=CONCURRENCY)
    outcomes: dict[int, _Outcome] = {}

    def guarded(function, *args):
        try:
            return function(*args)
        except TransientRegistryError as exc:
            return _Outcome("pending", str(exc), transient=True)
        except RegistryError as exc:
            return _Outcome("failed", str(exc))

    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            # Digests of images pushed without a known digest, resolved from their tags.
            for image in images:
                if not image.digest:
                    resolved = guarded(session.manifest_digest, image.repository, image.tag)
                    if isinstance(resolved, _Outcome):
                        outcomes[image.pk] = resolved
                    elif resolved is None:
                        outcomes[image.pk] = _Outcome("deleted", "the tag is already gone from the registry")
                    else:
                        image.digest = resolved
            todo = [i for i in images if i.pk not in outcomes]
            retained, owned = _retained_digests(todo), _owned_tags(todo)
            by_repository = defaultdict(list)
            for image in todo:
                by_repository[image.repository].append(image)
            for repository, group in by_repository.items():
                tag_digests = _tag_digests(session, pool, repository, guarded)
                if isinstance(tag_digests, _Outcome):
                    outcomes.update({i.pk: tag_digests for i in group})
                    continue
                deletions = {}
                for image in group:
                    key = (image.registry, image.repository, image.digest)
                    if key in retained:
                        outcomes[image.pk] = _Outcome("kept", f"build {retained[key]}, which is kept, pushed the same "
                                                              "digest")
                        continue
                    foreign = sorted(t for t, d in tag_digests.items() if d == image.digest and t not in owned[key])
                    if foreign:
                        outcomes[image.pk] = _Outcome("kept", "tag " + ", ".join(f"'{t}'" for t in foreign)
                                                      + " also points to this digest and was not pushed by a deleted "
                                                        "build; deleting the digest would delete it too")
                        continue
                    deletions.setdefault(image.digest, []).append(image)
                results = pool.map(lambda digest: (digest, guarded(session.delete_manifest, repository, digest)),
                                   list(deletions))
                for digest, result in results:
                    if isinstance(result, _Outcome):
                        outcome = result
                    elif result:
                        outcome = _Outcome("deleted", "manifest deleted")
                    else:
                        outcome = _Outcome("deleted", "already gone from the registry (404)")
                    outcomes.update({i.pk: outcome for i in deletions[digest]})
    finally:
        session.close()
    return outcomes


def _tag_digests(session, pool, repository, guarded):
    tags = guarded(session.tags, repository)
    if isinstance(tags, _Outcome):
        return tags
    digests = list(pool.map(lambda tag: guarded(session.manifest_digest, repository, tag), tags))
    for result in digests:
        if isinstance(result, _Outcome):
            return result
    return {tag: digest for tag, digest in zip(tags, digests) if digest}


def _delete_from_ecr(connection, images) -> dict[int, _Outcome]:
    from connections.registries.ecr import EcrRepository

    outcomes: dict[int, _Outcome] = {}
    retained, owned = _retained_digests(images), _owned_tags(images)
    by_repository = defaultdict(list)
    for image in images:
        by_repository[image.repository].append(image)
    for repository, group in by_repository.items():
        ecr = EcrRepository(connection, repository)
        tags_by_digest = ecr.tags_by_digest()
        requests, owners = [], defaultdict(list)
        for image in group:
            key = (image.registry, image.repository, image.digest)
            if key in retained:
                outcomes[image.pk] = _Outcome("kept", f"build {retained[key]}, which is kept, pushed the same digest")
                continue
            foreign = tags_by_digest.get(image.digest, set()) - owned[key]
            if foreign and image.tag:
                # ECR deletes by tag: remove only the deleted build's tag; the image stays for the others.
                image_id = {"imageTag": image.tag}
                note = (f"only tag '{image.tag}' was removed: tag(s) {', '.join(sorted(foreign))} still point to "
                        "the digest")
            elif foreign:
                outcomes[image.pk] = _Outcome("kept", f"tag(s) {', '.join(sorted(foreign))} not pushed by a deleted "
                                                      "build point to this digest")
                continue
            else:
                image_id, note = {"imageDigest": image.digest}, "image deleted"
            if image_id not in requests:
                requests.append(image_id)
            owners[_id_key(image_id)].append((image, note))
        if not requests:
            continue
        deleted, failures = ecr.delete(requests)
        for image_id in deleted:
            for key in _id_keys(image_id):
                for image, note in owners.pop(key, []):
                    outcomes[image.pk] = _Outcome("deleted", note)
        for failure in failures:
            code, reason = failure.get("failureCode", ""), failure.get("failureReason", "")
            for key in _id_keys(failure.get("imageId", {})):
                for image, _ in owners.pop(key, []):
                    if code == "ImageNotFound":
                        outcomes[image.pk] = _Outcome("deleted", f"already gone ({code})")
                    elif code == "ImageReferencedByManifestList":
                        outcomes[image.pk] = _Outcome("kept", f"{code}: {reason}")
                    else:
                        outcomes[image.pk] = _Outcome("failed", f"ECR BatchDeleteImage: {code}: {reason}")
        for pending in owners.values():
            for image, _ in pending:
                outcomes[image.pk] = _Outcome("failed", "ECR answered nothing about this image")
    return outcomes


def _id_key(image_id: dict) -> tuple:
    return ("digest", image_id["imageDigest"]) if "imageDigest" in image_id else ("tag", image_id.get("imageTag"))


def _id_keys(image_id: dict) -> list[tuple]:
    keys = []
    if image_id.get("imageDigest"):
        keys.append(("digest", image_id["imageDigest"]))
    if image_id.get("imageTag"):
        keys.append(("tag", image_id["imageTag"]))
    return keys


def pushed_images_retry(images) -> int:
    """Admin: failed or pending deletions are tried again at the next run."""
    now = timezone.now()
    return PushedImage.objects.filter(
        pk__in=[i.pk for i in images],
        cleanup_status__in=[PushedImage.CleanupStatus.FAILED, PushedImage.CleanupStatus.PENDING],
    ).update(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now, claim="", claimed_until=None)
