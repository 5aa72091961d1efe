"""Server clean-up: retention rules delete old builds; the images they pushed are deleted from registries.

Deleting a build turns its pushed images into pending deletions (tombstones that outlive the
build). Deleting them is a state machine on PushedImage: rows are claimed by a conditional UPDATE
before any registry call, then end `deleted`, `kept` (with the reason it was not safe), `failed`
(with the registry's answer; retryable from the admin), or stay `pending` with their last error
and a later `next_attempt_at` when the registry was unreachable, answered 5xx or 429.

Which connection deletes: the one the build logged in with for that registry (PushedImage.connection),
while the image's project may still use it; then the project's and its ancestors' connections for that
registry, nearest first. One that may not delete (401/403/405, AWS access denied) hands the image to
the next; the record names the connection that answered, and every refusal before it.

A push its build reported (report_push) is deleted only with the login connection that saw it in the registry
during the build, and only when it was seen so (builds/reported/).

What is never deleted: an image whose owner is uncertain (pushed while other builds ran on its daemon)
nor its digest; a tag matching a protected pattern (its configuration's and DOCKERSUPPORT_PROTECTED_TAGS)
nor a digest such a tag points to; a digest a retained build also pushed; a digest that a tag not pushed
by a deleted build points to (`latest` set by hand) — on ECR only the deleted builds' own tags are
removed then. The registry's tags are read again just before deleting, once per repository and
connection in a run. Manifest lists and OCI indexes are deleted as a whole by the digest that was pushed.

Docker Hub and GitHub's registry refuse manifest DELETE; their connections delete through their own APIs
(connections/registries/docker_hub.py: tags, like ECR's; github.py: package versions, an index's children with it)
under the same rules.
"""

import fnmatch
import logging
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from connections.models import Connection, Project
from connections.registries import (
    Deletion,
    DeletionResult,
    ImageRef,
    Registry,
    RegistryError,
    is_digest,
    is_repository_name,
    is_tag,
    open_registry,
)
from connections.selectors import connections_nearest_first
from connections.validators import registry_host

from ..models import Build, BuildConfiguration, CleanupRun, PushedImage
from .related import related_deletions_run, related_plan, related_summary

log = logging.getLogger(__name__)

CONCURRENCY = 8  # requests at a time to one registry
CLAIM_FOR = timedelta(minutes=15)
MAX_ATTEMPTS = 10
OWNER_UNCERTAIN = "owner uncertain"  # how the reason of an image kept for that starts; settling looks for it
REPORTED_UNVERIFIED = ("reported by its build, but its registry was not seen holding it during the build with one of "
                       "the build's login connections (or that connection is gone): nothing is deleted for it")
_PATTERN_SEPARATORS = re.compile(r"[\s,]+")


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: 1, 2, 4 ... minutes, at most 6 hours."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 360))


def registry_key(name: str) -> str:
    """What images and connections are matched by: the registry's canonical host (Docker Hub's several
    names as one, once registry_host gives the canonical identity). Every comparison of registries in
    clean-up goes through this function, so the canonical-identity function is called here alone.
    """
    return registry_host(name)


# --- Rules that hold whatever the registry holds -----------------------------------------------

@dataclass(frozen=True)
class TagProtection:
    """The protected tag patterns of one configuration's images, each with where it is set."""

    patterns: tuple[tuple[str, str], ...] = ()

    def match(self, tag: str) -> str:
        """Why `tag` is protected ("pattern 'v*' of configuration 'app'"), or "" when it is not."""
        for pattern, origin in self.patterns:
            if tag and fnmatch.fnmatchcase(tag, pattern):
                return f"pattern '{pattern}' of {origin}"
        return ""


def tag_patterns(text) -> list[str]:
    """Shell-style patterns separated by spaces or commas (a list of them is taken as it is)."""
    if isinstance(text, (list, tuple)):
        text = " ".join(text)
    return [pattern for pattern in _PATTERN_SEPARATORS.split(text or "") if pattern]


def protections_for(idents) -> dict[str, TagProtection]:
    """Configuration ident → its protected patterns, then the site's (DOCKERSUPPORT_PROTECTED_TAGS).

    A configuration deleted since keeps the site's alone."""
    idents = set(idents)
    site = [(pattern, "DOCKERSUPPORT_PROTECTED_TAGS")
            for pattern in tag_patterns(getattr(settings, "DOCKERSUPPORT_PROTECTED_TAGS", ""))]
    own = dict(BuildConfiguration.objects.filter(ident__in=idents).values_list("ident", "protected_tags"))
    return {ident: TagProtection(tuple([(pattern, f"configuration '{ident}'")
                                        for pattern in tag_patterns(own.get(ident, ""))] + site))
            for ident in idents}


def image_hold(image: PushedImage, protection: TagProtection) -> Deletion | None:
    """Why an image is kept whatever its registry holds: its owner is uncertain, its tag is protected, or what
    it pushed is not known. None when only the registry can tell."""
    if image.owner_uncertain:
        note = image.owner_note or "pushed while other builds ran on the same Docker daemon"
        return Deletion.kept(f"{OWNER_UNCERTAIN}: {note}; never deleted automatically: an admin of its project "
                             "can settle it (action 'Settle owner') and a later run deletes it")
    if image.reported and (image.verified_at is None or image.connection_id is None):
        return Deletion.kept(REPORTED_UNVERIFIED)
    why = protection.match(image.tag)
    if why:
        return Deletion.kept(f"tag '{image.tag}' is protected ({why})")
    if not image.digest:
        return Deletion.kept(f"its digest was not recorded at the push: what tag '{image.tag}' points to now may be "
                             "another push; delete it by hand if it is this build's")
    if not (is_digest(image.digest) and is_repository_name(image.repository)
            and (not image.tag or is_tag(image.tag))):
        return Deletion.kept("its recorded repository, tag or digest is not one a registry would accept: "
                             "nothing is deleted for it")
    return None


# --- Which connection ----------------------------------------------------------------------------

@dataclass
class Candidates:
    """The connections that may delete an image, in the order they are tried."""

    connections: list[Connection]
    note: str = ""  # why the connection its build logged in with is not among them


def deletion_candidates(image: PushedImage, usable: list[Connection]) -> Candidates:
    """First the connection its build logged in with for that registry, while the image's project may still use
    it; then the others of `usable` (the project's, nearest first) for that registry."""
    registry = registry_key(image.registry)
    matching = [c for c in usable if registry_key(c.registry_address) == registry]
    recorded = next((c for c in matching if c.pk == image.connection_id), None)
    if image.reported:
        # Only the login connection that saw it in the registry during its build: one whose credentials the build
        # held anyway, never another connection of the project (a report is the build's word).
        if recorded is not None:
            return Candidates([recorded])
        return Candidates([], f"a reported push is deleted only with its build's login connection that saw it in the "
                              f"registry ({image.connection or 'gone'}), which is not one of project "
                              f"'{image.project.ident}' or its ancestors for {registry}")
    if recorded is not None:
        matching.remove(recorded)
        return Candidates([recorded, *matching])
    note = ""
    if image.connection_id is not None:
        note = (f"connection {image.connection} (its build's login) is not one of project "
                f"'{image.project.ident}' or its ancestors for {registry}, so it is not used")
    return Candidates(matching, note)


def no_connection_message(project: Project, registry: str) -> str:
    return f"no connection for {registry} in project '{project.ident}' or its ancestors"


# --- Retention ---------------------------------------------------------------------------------

@dataclass
class PlannedImage:
    image: PushedImage
    connections: list[Connection] = field(default_factory=list)  # tried in this order
    problem: str = ""  # why no connection can delete it
    kept: str = ""  # why it is kept whatever the registry holds

    @property
    def connection(self) -> Connection | None:
        return self.connections[0] if self.connections else None


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
                entry.images = _planned_images(build, configuration)
            plan.append(entry)
    return plan


def _planned_images(build: Build, configuration: BuildConfiguration) -> list[PlannedImage]:
    protection = protections_for([configuration.ident])[configuration.ident]
    usable = connections_nearest_first(configuration.project)
    planned = []
    images = build.pushed_images.filter(cleanup_status=PushedImage.CleanupStatus.KEPT).select_related(
        "project", "connection__project")
    for image in images:
        hold = image_hold(image, protection)
        if hold is not None:
            planned.append(PlannedImage(image=image, kept=hold.reason))
            continue
        candidates = deletion_candidates(image, usable)
        problem = "" if candidates.connections else no_connection_message(configuration.project, image.registry)
        planned.append(PlannedImage(image=image, connections=candidates.connections,
                                    problem="; ".join(filter(None, [problem, candidates.note]))))
    return planned


def plan_text(plan: list[PlannedBuild]) -> str:
    lines = []
    for entry in plan:
        lines.append(f"build {entry.build} (started {entry.build.started_at:%Y-%m-%d %H:%M}): {entry.reason}")
        for planned in entry.images:
            image = planned.image
            if planned.kept:
                lines.append(f"  keep {image.reference} in {image.registry}: {planned.kept}")
                continue
            via = ("with connection " + ", else ".join(str(c) for c in planned.connections) if planned.connections
                   else f"impossible: {planned.problem}")
            lines.append(f"  delete {image.reference} from {image.registry} {via}")
    images = sum(1 for entry in plan for planned in entry.images if not planned.kept)
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
    DeletionResult.REFUSED: PushedImage.CleanupStatus.FAILED,
}


@dataclass
class ImageOutcome:
    """What became of one image in a run: the answer, the connection that gave it, the refusals before it."""

    deletion: Deletion
    connection: Connection | None = None
    refused: list[tuple[Connection, str]] = field(default_factory=list)

    @property
    def result(self) -> DeletionResult:
        return self.deletion.result

    @property
    def reason(self) -> str:
        result, text = self.deletion.result, self.deletion.reason
        refusals = "; ".join(f"connection {c}: {why}" for c, why in self.refused)
        if self.connection is None:  # decided before any registry call, or no connection was allowed
            return "; ".join(filter(None, [refusals and f"no connection may delete it: {refusals}", text]))
        if result in (DeletionResult.DELETED, DeletionResult.GONE):
            text = f"{text}, with connection {self.connection}"
        elif result in (DeletionResult.FAILED, DeletionResult.RETRY):
            text = f"connection {self.connection}: {text}"
        return text + (f"; refused before: {refusals}" if refusals else "")

    def detail(self, image: PushedImage, key: str) -> dict:
        """The run's record of it (CleanupRun.details)."""
        entry = {"image": image.reference, "outcome": key, "reason": self.reason}
        if self.connection is not None:
            entry["connection"] = str(self.connection)
        if self.refused:
            entry["refused"] = [{"connection": str(c), "answer": why} for c, why in self.refused]
        return entry


def pending_deletions_process(*, run: CleanupRun | None = None, progress=None, now=None) -> dict:
    """Deletes every pending image whose time has come, registry by registry, with bounded concurrency."""
    say = progress or (lambda text: None)
    images = _claim(now or timezone.now())
    protections = protections_for({image.configuration_ident for image in images})
    outcomes: dict[int, ImageOutcome] = {}
    groups: dict[str, list[PushedImage]] = defaultdict(list)
    for image in images:
        hold = image_hold(image, protections[image.configuration_ident])
        if hold is not None:
            outcomes[image.pk] = ImageOutcome(hold)
        else:
            groups[registry_key(image.registry)].append(image)
    for registry, group in groups.items():
        say(f"deleting {len(group)} image(s) from {registry}")
        outcomes.update(registry_images_delete(registry, group, protections, say))
    images_record(images, outcomes)
    tally = defaultdict(int)
    for image in images:
        outcome = outcomes[image.pk]
        key = "retrying" if outcome.result == DeletionResult.RETRY else _STATUS[outcome.result]
        tally[key] += 1
        if run is not None:
            run.details.append(outcome.detail(image, key))
        say(f"  {image.reference}: {key}" + (f" ({outcome.reason})" if outcome.reason else ""))
    if run is not None:
        run.images_deleted += tally.get("deleted", 0)
        run.images_kept += tally.get("kept", 0)
        run.images_failed += tally.get("failed", 0)
        run.images_retrying += tally.get("retrying", 0)
    return dict(tally)


def _claim(now) -> list[PushedImage]:
    token = str(uuid.uuid4())
    due = PushedImage.objects.filter(
        cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at__lte=now,
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    PushedImage.objects.filter(pk__in=list(due.values_list("pk", flat=True))).filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    ).update(claim=token, claimed_until=now + CLAIM_FOR)
    return list(PushedImage.objects.filter(claim=token, cleanup_status=PushedImage.CleanupStatus.PENDING)
                .select_related("project", "connection__project"))


def images_record(images, outcomes: dict[int, ImageOutcome]) -> None:
    """Stores each outcome on its image, if the image is still this run's (its claim); alike ones in one UPDATE."""
    now = timezone.now()
    batches: dict[tuple, list[int]] = defaultdict(list)
    for image in images:
        fields = _recorded_fields(image, outcomes[image.pk], now)
        batches[(image.claim, tuple(sorted(fields.items())))].append(image.pk)
    for (claim, fields), pks in batches.items():
        PushedImage.objects.filter(pk__in=pks, claim=claim).update(**dict(fields))


def _recorded_fields(image: PushedImage, outcome: ImageOutcome, now) -> dict:
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
    return fields


def registry_images_delete(registry: str, images, protections, say) -> dict[int, ImageOutcome]:
    """Each image with its first candidate connection; those it may not delete go to their next, and so on.

    Images that share a connection are deleted in one session with it (one tag read per repository).
    """
    usable: dict[int, list[Connection]] = {}
    candidates: dict[int, Candidates] = {}
    for image in images:
        if image.project_id not in usable:
            usable[image.project_id] = connections_nearest_first(image.project)
        candidates[image.pk] = deletion_candidates(image, usable[image.project_id])
    refused: dict[int, list[tuple[Connection, str]]] = defaultdict(list)
    outcomes: dict[int, ImageOutcome] = {}
    waiting = list(images)
    while waiting:
        turns: dict[Connection, list[PushedImage]] = defaultdict(list)
        for image in waiting:
            left = candidates[image.pk].connections[len(refused[image.pk]):]
            if left:
                turns[left[0]].append(image)
            else:
                outcomes[image.pk] = _none_allowed(image, candidates[image.pk], refused[image.pk])
        waiting = []
        for connection, group in turns.items():
            say(f"  {len(group)} image(s) with connection {connection}")
            answers = connection_images_delete(connection, registry, group, protections)
            for image in group:
                answer = answers[image.pk]
                if answer.result == DeletionResult.REFUSED:
                    refused[image.pk].append((connection, answer.reason))
                    waiting.append(image)
                else:
                    outcomes[image.pk] = ImageOutcome(answer, connection, list(refused[image.pk]))
    return outcomes


def _none_allowed(image: PushedImage, candidates: Candidates, refused) -> ImageOutcome:
    if refused:
        return ImageOutcome(Deletion.failed(candidates.note), refused=list(refused))
    reason = no_connection_message(image.project, registry_key(image.registry))
    return ImageOutcome(Deletion.failed("; ".join(filter(None, [reason, candidates.note]))))


def connection_images_delete(connection: Connection, registry: str, images, protections) -> dict[int, Deletion]:
    """Deletes what is safe to delete of `images` with one connection; `refused` ones it may not delete."""
    try:
        with open_registry(connection, session_name="dockersupport-cleanup", concurrency=CONCURRENCY) as session:
            holders = digest_holders(registry, images, protections)
            outcomes = {}
            for repository, group in _by_repository(images).items():
                outcomes.update(repository_images_delete(session, repository, group, holders))
            return outcomes
    except RegistryError as exc:  # credentials could not even be obtained
        answer = Deletion.from_error(exc)
        return {i.pk: answer for i in images}


@dataclass
class DigestHolders:
    """What else holds the digests of a registry's images, read from the database right before deleting."""

    retained: dict[tuple[str, str], str]  # (repository, digest) → why it is kept: who else pushed it
    owned: dict[tuple[str, str], set[str]]  # (repository, digest) → tags of deleted builds being cleaned up
    protections: dict[str, TagProtection]


def digest_holders(registry: str, images, protections) -> DigestHolders:
    """A digest is held by a build that still exists, an image whose owner is uncertain, and an image kept by
    design (of a deleted build whose configuration keeps pushed images, or whose tag is protected); a tag
    belongs to the deletion only when a deleted build pushed it, its owner is certain, it is not protected and
    its deletion is wanted (pending or failed)."""
    digests = {image.digest for image in images}
    retained = {}
    status = PushedImage.CleanupStatus
    # Every digest a kept build pushed to these repositories: an index among them holds its children.
    holders = list(PushedImage.objects.filter(repository__in={image.repository for image in images}).exclude(
        digest="").filter(
        Q(build__isnull=False) | Q(owner_uncertain=True) | Q(cleanup_status=status.KEPT)
    ).select_related("build__configuration"))
    tombstone_protections = {**protections_for(
        {row.configuration_ident for row in holders if row.build is None} - set(protections)), **protections}
    for row in holders:
        if registry_key(row.registry) != registry:
            continue
        if row.build is None and not row.owner_uncertain and row.cleanup_attempts and not (
                tombstone_protections[row.configuration_ident].match(row.tag)):
            continue  # kept by a run's decision (something else held it then), not by design: decided again
        retained.setdefault((row.repository, row.digest), _held_by(row))
    status = PushedImage.CleanupStatus
    tombstones = list(PushedImage.objects.filter(
        build__isnull=True, owner_uncertain=False, digest__in=digests,
        cleanup_status__in=[status.PENDING, status.FAILED],
    ).only("registry", "repository", "digest", "tag", "configuration_ident"))
    protections = {**protections_for({row.configuration_ident for row in tombstones} - set(protections)),
                   **protections}
    owned = defaultdict(set)
    for row in tombstones:
        if registry_key(row.registry) == registry and not protections[row.configuration_ident].match(row.tag):
            owned[(row.repository, row.digest)].add(row.tag)
    return DigestHolders(retained, owned, protections)


def _held_by(row: PushedImage) -> str:
    if row.build is not None:
        return f"build {row.build}, which is kept, pushed the same digest"
    if row.owner_uncertain:
        return (f"an image whose owner is uncertain ({row.configuration_ident} #{row.build_number}, tag '{row.tag}') "
                "has the same digest")
    return (f"an image that is kept ({row.configuration_ident} #{row.build_number}, tag '{row.tag}': "
            f"{row.cleanup_reason or 'its configuration keeps pushed images'}) has the same digest")


def _by_repository(images) -> dict[str, list[PushedImage]]:
    groups = defaultdict(list)
    for image in images:
        groups[image.repository].append(image)
    return groups


def repository_images_delete(registry: Registry, repository: str, images, holders: DigestHolders
                             ) -> dict[int, Deletion]:
    """Reads the repository's tags again, then deletes what nothing else holds. The registry's answer about one
    repository (or one image) decides for those images alone."""
    try:
        tags_by_digest = registry.tags_by_digest(repository)
    except RegistryError as exc:
        return {image.pk: Deletion.from_error(exc) for image in images}
    outcomes: dict[int, Deletion] = {}
    wanted: dict[ImageRef, list[tuple[PushedImage, str]]] = defaultdict(list)  # with the reason once deleted
    for image in images:
        decision = image_decide(image, tags_by_digest, holders, by_tag=registry.deletes_by_tag)
        if isinstance(decision, Deletion):
            outcomes[image.pk] = decision
        else:
            wanted[decision[0]].append((image, decision[1]))
    if not wanted:
        return outcomes
    answers = repository_refs_delete(registry, repository, list(wanted), tags_by_digest, holders)
    for ref, answer in answers.items():
        for image, reason in wanted[ref]:
            deleted = answer.result == DeletionResult.DELETED
            outcomes[image.pk] = replace(answer, reason=reason) if deleted and reason else answer
    return outcomes


def repository_refs_delete(registry: Registry, repository: str, refs: list[ImageRef], tags_by_digest, holders
                           ) -> dict[ImageRef, Deletion]:
    """Deletes `refs` and what goes with them (an index's children, referrers, their tags), in a safe order; keeps
    what an index in use or a kept subject still holds (builds/cleanup/related.py)."""
    digests = [ref.digest for ref in refs if not ref.by_tag]
    kept = {digest: why for (name, digest), why in holders.retained.items() if name == repository}
    try:
        graph = registry.related_graph(repository, wanted=digests, kept=kept,
                                       tags={tag: digest for digest, tags in tags_by_digest.items() for tag in tags})
        if graph is None:  # ECR keeps what an index references itself
            return registry.delete(repository, refs)
    except RegistryError as exc:  # ECR refused the call as a whole; a v2 registry's graph could not be read
        answer = Deletion.from_error(exc)
        return {ref: answer for ref in refs}
    plan = related_plan(digests, kept, graph)
    outcomes = related_deletions_run(plan, lambda batch: {
        ref.digest: answer for ref, answer in registry.delete(repository, [ImageRef(digest=d) for d in batch]).items()})
    answers = {}
    for ref in refs:
        if ref.digest in plan.kept:
            answers[ref] = Deletion.kept(plan.kept[ref.digest])
            continue
        answer, summary = outcomes[ref.digest], related_summary(plan, outcomes, ref.digest)
        answers[ref] = replace(answer, reason="; ".join(filter(None, [answer.reason, summary])))
    return answers


def image_decide(image: PushedImage, tags_by_digest: dict[str, set[str]], holders: DigestHolders, *,
                 by_tag: bool) -> Deletion | tuple[ImageRef, str]:
    """Kept (why), or what to delete: the digest when only tags of deleted builds point to it; on a registry that
    removes one tag alone (ECR), the image's own tag while it still points to the digest."""
    key = (image.repository, image.digest)
    if key in holders.retained:
        return Deletion.kept(holders.retained[key])
    tags = tags_by_digest.get(image.digest, set())
    protection = holders.protections[image.configuration_ident]
    protected = {tag: why for tag in tags if (why := protection.match(tag))}
    foreign = tags - holders.owned[key] - set(protected)
    if not protected and not foreign:
        return ImageRef(digest=image.digest), ""
    if by_tag and image.tag in tags:
        others = ", ".join(sorted(set(protected) | foreign))
        return ImageRef(tag=image.tag), f"only tag '{image.tag}' was removed: tag(s) {others} still point to the digest"
    return Deletion.kept(_kept_reason(protected, foreign))


def _kept_reason(protected: dict[str, str], foreign: set[str]) -> str:
    parts = []
    if protected:
        parts.append("protected tag " + ", ".join(f"'{tag}' ({why})" for tag, why in sorted(protected.items()))
                     + " points to this digest")
    if foreign:
        parts.append("tag " + ", ".join(f"'{tag}'" for tag in sorted(foreign))
                     + " also points to this digest and was not pushed by a deleted build")
    return "; ".join(parts) + "; deleting the digest would delete it too"


def pushed_images_retry(images) -> int:
    """Admin: failed or pending deletions are tried again at the next run."""
    now = timezone.now()
    return PushedImage.objects.filter(
        pk__in=[i.pk for i in images],
        cleanup_status__in=[PushedImage.CleanupStatus.FAILED, PushedImage.CleanupStatus.PENDING],
    ).update(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now, claim="", claimed_until=None)


@transaction.atomic
def pushed_images_settle_owner(images, *, user) -> int:
    """Admin: "this build pushed it". The owner is no longer uncertain; a tombstone kept for that alone is
    pending deletion again, for the next run. Returns how many were uncertain."""
    now = timezone.now()
    note = f"settled by {user.get_username()} at {now:%Y-%m-%d %H:%M:%S} UTC"[:500]
    uncertain = PushedImage.objects.filter(pk__in=[i.pk for i in images], owner_uncertain=True)
    uncertain.filter(
        build__isnull=True, cleanup_status=PushedImage.CleanupStatus.KEPT, cleanup_reason__startswith=OWNER_UNCERTAIN,
    ).update(cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now, cleanup_updated_at=now,
             claim="", claimed_until=None, cleanup_reason=f"owner {note}; to be deleted at the next run")
    return uncertain.update(owner_uncertain=False, owner_note=note)


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
