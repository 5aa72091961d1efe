"""Pushes a build reports itself: `manage.py report_push REFERENCE [--digest D]` in its command.

buildx with a container driver, kaniko, buildah and `podman push` talk to the registry themselves: no
push event reaches the agent, so without a report the image is neither in the build's Docker Info nor
cleaned up. The command reports it with the build's report token (DOCKERSUPPORT_BUILD_TOKEN, made when the
build starts, stored hashed, valid while the build runs), through its agent or straight to the API.

A report is believed only as far as the registry confirms it, while the build runs: the registry is
read with the build's own login connection for it, and must hold the digest now (the reported one, or
the tag's). What a hostile build could make clean-up delete is bounded so:
- a digest another build's push recorded in that repository before this build started is refused (the
  report of someone else's existing image, to get it deleted), and so is one the registry says it has had
  since before the build started (ECR's imagePushedAt);
- where the registry does not say when it first had the digest (the distribution API keeps no times: a v2
  registry, Docker Hub, ghcr.io), the report is recorded of uncertain owner: never deleted automatically, as an
  image pushed while other builds ran, until an admin of the project settles it;
- clean-up deletes a reported push only when the registry was seen holding it during its build
  (`verified_at`), and only with that login connection (`connection`), whose credentials the build held
  anyway; every rule of every push holds too (digests other builds or tags hold, protected tags).
A refused report records nothing. The token never appears in an answer, a log or an error.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from agent import protocol
from agent.references import registry_and_repository, registry_identity, split_reference
from connections.models import Connection
from connections.registries import (
    RegistryError,
    TransientRegistryError,
    is_digest,
    is_repository_name,
    is_tag,
    open_registry,
)
from connections.selectors import connections_usable_by
from connections.tokens import new_token, token_digest

from ..models import Build, DockerOperation, LoginConnection, PushedImage

REPORTS_MAX = 1000  # pushes one build may report: a runaway (or hostile) command fills no table
REFERENCE_MAX = 1000
NAME_MAX = DockerOperation._meta.get_field("image").max_length
RAW_ACTION = "push (reported by the build)"
PUSH_TIME_SLACK = timedelta(seconds=1)  # a registry's push time may be whole seconds (and its clock not ours)
REPORTED_UNDATED = ("reported by its build; {registry} does not say when it first had this digest, so it may be an "
                    "image that was there before the build")


class ReportRefused(Exception):
    """The report is refused and nothing was recorded. `field`: what of the request is wrong ('' for none);
    `status`: the HTTP status the API answers."""

    def __init__(self, message: str, *, field: str = "reference", status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


def report_token_issue(build: Build) -> str:
    """A new report token for the build's command; the previous one stops working. Shown once."""
    token, digest = new_token(protocol.REPORT_TOKEN_PREFIX)
    Build.objects.filter(pk=build.pk).update(report_token_hash=digest)
    build.report_token_hash = digest
    return token


def report_authenticate(token: str) -> Build | None:
    """The running build whose report token this is; None for any other text or once the build has ended."""
    if not isinstance(token, str) or not token.startswith(protocol.REPORT_TOKEN_PREFIX):
        return None
    return (Build.objects.select_related("configuration__project", "agent")
            .filter(report_token_hash=token_digest(token), status=Build.Status.RUNNING).first())


@dataclass(frozen=True)
class Reference:
    name: str  # as written, without tag and digest: the operation's image
    registry: str  # its identity
    repository: str
    tag: str
    digest: str

    def __str__(self):
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


def reference_parse(text: str) -> Reference:
    """`[registry/]repository[:tag][@digest]`, as Docker reads it; ReportRefused naming what is wrong."""
    if not isinstance(text, str) or not text or len(text) > REFERENCE_MAX or any(c.isspace() for c in text):
        raise ReportRefused(f"not an image reference: give [registry/]repository:tag or repository@digest, at most "
                            f"{REFERENCE_MAX} characters without spaces")
    name, tag, digest = split_reference(text)
    registry, repository = registry_and_repository(name)
    if len(name) > NAME_MAX or len(registry) > PushedImage._meta.get_field("registry").max_length:
        raise ReportRefused(f"the image name is longer than {NAME_MAX} characters, or its registry's than "
                            f"{PushedImage._meta.get_field('registry').max_length}")
    if not is_repository_name(repository):
        raise ReportRefused(f"'{repository[:300]}' is not a repository name a registry accepts (lowercase letters, "
                            "digits and separators)")
    if tag and not is_tag(tag):
        raise ReportRefused(f"'{tag[:200]}' is not a tag a registry accepts")
    if digest and not is_digest(digest):
        raise ReportRefused(f"'{digest[:200]}' is not a digest (sha256:<64 hex digits>)")
    if not tag and not digest:
        raise ReportRefused(f"{text}: give the tag that was pushed (repository:tag) or its digest (repository@digest)")
    return Reference(name=name, registry=registry, repository=repository, tag=tag, digest=digest)


def login_connection(build: Build, registry: str) -> Connection:
    """The build's login connection for `registry` (its identity); ReportRefused when it has none."""
    configuration = build.configuration
    usable = set(connections_usable_by(configuration.project).values_list("pk", flat=True))
    for login in LoginConnection.objects.filter(configuration=configuration).select_related("connection__project"):
        if registry_identity(login.connection.registry_address) == registry and login.connection_id in usable:
            return login.connection
    raise ReportRefused(f"build {build} has no login connection for {registry}: only a push to a registry its "
                        f"configuration '{configuration.ident}' logs in to can be reported (the registry is read "
                        "with that connection)")


def registry_digest(connection: Connection, reference: Reference, build: Build) -> tuple[str, datetime | None]:
    """The digest the registry holds now for the reference's tag (or the reference's digest, when it holds it), and
    when the registry first had it where it says so (ECR); ReportRefused when it holds none."""
    try:
        with open_registry(connection, session_name=f"dockersupport-report-{build.pk}") as registry:
            if reference.tag:
                found = registry.digest_of(reference.repository, reference.tag)
            else:  # one request, never a listing of the repository: a report is answered within the API call
                found = reference.digest if registry.holds(reference.repository, reference.digest) else None
            first_had = registry.pushed_at(reference.repository, found) if found and is_digest(found) else None
    except TransientRegistryError as exc:
        raise ReportRefused(f"registry {reference.registry} could not be asked ({exc}); report it again",
                            field="", status=503) from None
    except RegistryError as exc:
        raise ReportRefused(f"registry {reference.registry} (connection {connection}) did not say what it holds: "
                            f"{exc}", status=502, field="") from None
    if not found:
        what = f"tag '{reference.tag}'" if reference.tag else reference.digest
        raise ReportRefused(f"registry {reference.registry} has no {what} in repository {reference.repository}: "
                            "report a push once it is done", field="reference")
    if not is_digest(found):
        raise ReportRefused(f"registry {reference.registry} answered '{found[:200]}' for {reference}, which is no "
                            "digest: nothing is recorded", field="", status=502)
    return found, first_had


def push_report(*, build: Build, reference: str, digest: str = "", agent=None) -> tuple[PushedImage, bool]:
    """Records a push the build reports, once its registry holds it: (its pushed image, whether the build had it
    already). ReportRefused records nothing."""
    if agent is not None and build.agent_id != agent.pk:
        raise ReportRefused(f"build {build} runs on another agent: report its pushes through its own agent",
                            field="", status=403)
    parsed = reference_parse(reference)
    if digest and not is_digest(digest):
        raise ReportRefused(f"'{digest[:200]}' is not a digest (sha256:<64 hex digits>)", field="digest")
    if digest and parsed.digest and digest != parsed.digest:
        raise ReportRefused(f"--digest {digest} is not the digest of the reference, {parsed.digest}", field="digest")
    wanted = digest or parsed.digest
    connection = login_connection(build, parsed.registry)
    found, first_had = registry_digest(connection, parsed, build)
    seen_at = timezone.now()  # during the build: _record checks that it still runs
    if wanted and found != wanted:
        raise ReportRefused(f"registry {parsed.registry} holds {found} for tag '{parsed.tag}' of {parsed.repository}, "
                            f"not {wanted}: the push was not of that digest, or another push replaced it",
                            field="digest")
    return _record(build, parsed, found, connection, seen_at, first_had)


@transaction.atomic
def _record(build: Build, reference: Reference, digest: str, connection: Connection, seen_at,
            first_had: datetime | None) -> tuple[PushedImage, bool]:
    locked = Build.objects.select_for_update().filter(pk=build.pk).first()
    if locked is None or locked.status != Build.Status.RUNNING:
        raise ReportRefused(f"build {build} is not running: a push is reported while its build runs", field="",
                            status=409)
    place = {"registry": reference.registry, "repository": reference.repository, "digest": digest}
    # Another build's push of it before this build started; not one clean-up deleted before then (the registry holds
    # it again: pushed anew since).
    earlier = (PushedImage.objects.filter(**place, pushed_at__lt=build.started_at).exclude(build=build)
               .exclude(cleanup_status=PushedImage.CleanupStatus.DELETED, cleanup_updated_at__lt=build.started_at)
               .order_by("pushed_at").first())
    if earlier is not None:
        # Another project's build is not named to this one.
        whose = (f"{earlier.configuration_ident} #{earlier.build_number}, "
                 if earlier.project_id == build.configuration.project_id else "")
        raise ReportRefused(f"{reference.registry}/{reference.repository}@{digest} was pushed before build {build} "
                            f"started ({whose}{earlier.pushed_at:%Y-%m-%d %H:%M:%S} UTC): a build reports only its "
                            "own pushes", field="digest", status=409)
    if first_had is not None and first_had < build.started_at - PUSH_TIME_SLACK:
        raise ReportRefused(f"registry {reference.registry} has had {reference.repository}@{digest} since "
                            f"{first_had:%Y-%m-%d %H:%M:%S %Z}, before build {build} started: a build reports only "
                            "its own pushes", field="digest", status=409)
    own = PushedImage.objects.filter(build=build, **place, tag=reference.tag).first()
    if own is not None:
        return own, True
    if PushedImage.objects.filter(build=build, reported=True).count() >= REPORTS_MAX:
        raise ReportRefused(f"build {build} has reported {REPORTS_MAX} pushes, the most one build may", field="",
                            status=409)
    now = timezone.now()
    DockerOperation.objects.create(
        build=build, agent_id=build.agent_id, time=now, time_nano=time.time_ns(), event_type="image",
        action=DockerOperation.Action.PUSH, raw_action=RAW_ACTION, actor_id=str(reference)[:255],
        image=reference.name, tag=reference.tag, digest=digest, reported=True,
        attributes={"connection": str(connection)})
    # The registry first had it during the build only where it says when (ECR); elsewhere the digest may be an image
    # that was there before the build (pushed by hand, by another CI): never deleted automatically until an admin of
    # the project settles it.
    uncertain = first_had is None
    image = PushedImage.objects.create(
        build=build, project_id=build.configuration.project_id, configuration_ident=build.configuration.ident,
        build_number=build.number, pushed_at=now, connection=connection, reported=True, verified_at=seen_at,
        registry=reference.registry, repository=reference.repository, tag=reference.tag, digest=digest,
        owner_uncertain=uncertain, owner_note=REPORTED_UNDATED.format(registry=reference.registry) if uncertain else "")
    return image, False


def push_recorded(image: PushedImage, recorded_before: bool) -> protocol.PushRecorded:
    return protocol.PushRecorded(
        build=image.build_id, build_label=f"{image.configuration_ident} #{image.build_number}",
        registry=image.registry, repository=image.repository, tag=image.tag, digest=image.digest,
        connection=str(image.connection) if image.connection_id else "",
        verified_at=image.verified_at or image.pushed_at, recorded_before=recorded_before)
