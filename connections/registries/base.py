"""What every kind of registry shares: its errors, credentials, token timing, and the session interface
with the deletion outcomes it answers in. Imports nothing of the outside systems it describes."""

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

# An expiring token (ECR) is reused until REUSE_MARGIN before it expires; a running build's token
# is replaced REFRESH_LEAD before it expires (periodic task or run_build's heartbeat).
REUSE_MARGIN = timedelta(minutes=5)
REFRESH_LEAD = timedelta(minutes=15)
# Without the list types a registry answers with one child manifest's digest, not the pushed one.
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])


# The distribution spec's grammar of what goes into a registry's URL paths: a repository name (path components
# of lowercase letters and digits joined by separators), a tag, a digest. Anything else — `..`, `%2e`, a slash
# in a digest — is never put in a path: a recorded push is what a build (or its agent) said it was.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


def is_repository_name(value) -> bool:
    return isinstance(value, str) and len(value) <= 255 and _REPOSITORY.fullmatch(value) is not None


def is_tag(value) -> bool:
    return isinstance(value, str) and _TAG.fullmatch(value) is not None


def is_digest(value) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


class RegistryError(Exception):
    """A registry (or AWS) could not be asked or refused; the message quotes the far side and never a secret."""


class TransientRegistryError(RegistryError):
    """Worth retrying later: unreachable, 5xx, 429."""


class RefusedByRegistry(RegistryError):
    """These credentials may not do it (HTTP 401/403/405, AWS access denied): another connection may."""


class ForbiddenDestination(RegistryError):
    """A request would have gone to an address that is never contacted (cloud metadata, link-local)."""


@dataclass(frozen=True)
class RegistryCredentials:
    server: str  # the key of `auths` in a Docker config.json, and the login's server address
    username: str
    password: str = field(repr=False)
    expires_at: datetime | None = None  # ECR tokens expire; registry passwords do not
    detail: str = ""  # what was verified on the way, for people (e.g. the assumed role)


@dataclass(frozen=True)
class ImageRef:
    """One image of a repository as a deletion names it: by its digest, or by one tag (on a registry
    that deletes by tag, that tag alone goes and the image stays for its other tags)."""

    digest: str = ""
    tag: str = ""

    def __post_init__(self):
        if self.digest and self.tag:
            raise ValueError("an image is named by its digest or by a tag, not both")

    @property
    def by_tag(self) -> bool:
        return bool(self.tag)


class DeletionResult(StrEnum):
    DELETED = "deleted"
    GONE = "gone"  # already gone from the registry: as good as deleted
    KEPT = "kept"  # the registry keeps it for a reason of its own (ECR: a manifest list refers to it)
    FAILED = "failed"
    RETRY = "retry"  # transient (unreachable, 5xx, 429): worth asking again later
    REFUSED = "refused"  # not allowed with these credentials (401/403/405): another connection may be


@dataclass(frozen=True)
class Deletion:
    """What became of one image a registry was asked to delete, and why, for people."""

    result: DeletionResult
    reason: str

    @classmethod
    def deleted(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.DELETED, reason)

    @classmethod
    def gone(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.GONE, reason)

    @classmethod
    def kept(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.KEPT, reason)

    @classmethod
    def failed(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.FAILED, reason)

    @classmethod
    def retry(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.RETRY, reason)

    @classmethod
    def refused(cls, reason: str) -> "Deletion":
        return cls(DeletionResult.REFUSED, reason)

    @classmethod
    def from_error(cls, error: RegistryError, about: str = "") -> "Deletion":
        """To retry when the error is transient, refused when these credentials may not, else failed; the
        reason quotes it, after `about` if given."""
        reason = f"{about}: {error}" if about else str(error)
        if isinstance(error, TransientRegistryError):
            return cls.retry(reason)
        return cls.refused(reason) if isinstance(error, RefusedByRegistry) else cls.failed(reason)


class Registry(ABC):
    """One registry opened with one connection's credentials (`open_registry`); close it, or use it in `with`.

    Every method raises RegistryError (TransientRegistryError when worth retrying) when the registry
    cannot answer it; `delete` answers for each image instead where the registry answers per image.
    """

    deletes_by_tag = False  # True: an image can lose one tag alone (ECR); False: deleting a digest takes every tag

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def close(self) -> None:
        """Gives back what the session holds (connections, threads)."""

    @abstractmethod
    def check_login(self) -> Iterator[str]:
        """Has the registry accept the credentials; yields what was verified, for people, as it is verified."""

    @abstractmethod
    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        """Every digest of the repository that tags point to, with those tags (ECR: untagged digests too)."""

    @abstractmethod
    def digest_of(self, repository: str, tag: str) -> str | None:
        """The digest a tag resolves to as pushed (lists and indexes stay whole); None if the tag is absent."""

    def holds(self, repository: str, digest: str) -> bool:
        """Whether the repository has the manifest of `digest` (a v2 registry resolves a digest as a reference)."""
        return self.digest_of(repository, digest) == digest

    def pushed_at(self, repository: str, digest: str) -> datetime | None:
        """When the repository first had the manifest of `digest`, where the registry says it (ECR); None where it
        does not (the distribution API keeps no times)."""
        return None

    @abstractmethod
    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        """Deletes the images of one repository; says for each what became of it."""

    def related_graph(self, repository: str, *, wanted: Iterable[str], kept: Iterable[str], tags: dict[str, str]):
        """The indexes and referrers around `wanted` (connections/registries/related.py: RelatedGraph), read now;
        None where the registry is not read so (ECR, which itself refuses to delete what an index references)."""
        return None
