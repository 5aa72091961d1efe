"""V2Registry: the session `open_registry` gives for every registry but ECR, on v2.py's HTTP client, with
what goes with a deletion (an index's children, referrers) read by related.py."""

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .base import Deletion, ImageRef, Registry, RegistryCredentials, RegistryError
from .related import repository_graph
from .v2 import RegistrySession


class V2Registry(Registry):
    """A registry through its HTTP API: deleting a manifest by digest deletes every tag on it.

    Tag lookups and deletions run `concurrency` at a time, on one pool of HTTP connections.
    """

    def __init__(self, address: str, credentials: RegistryCredentials, *, concurrency: int = 10):
        self.http = RegistrySession(address, credentials.username, credentials.password, pool_size=concurrency)
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.http.close()

    def _map(self, function, items):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency)
        return self._pool.map(function, items)

    def check_login(self) -> Iterator[str]:
        yield from self.http.check_login()

    def digest_of(self, repository: str, tag: str) -> str | None:
        return self.http.manifest_digest(repository, tag)

    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        tags = self.http.tags(repository)
        result: dict[str, set[str]] = {}
        # The first failing lookup, in tag order, is raised; a tag gone meanwhile is left out.
        for tag, digest in zip(tags, self._map(lambda tag: self.http.manifest_digest(repository, tag), tags)):
            if digest:
                result.setdefault(digest, set()).add(tag)
        return result

    def related_graph(self, repository: str, *, wanted: Iterable[str], kept: Iterable[str], tags: dict[str, str]):
        return repository_graph(self.http, repository, wanted=wanted, kept=kept, tags=tags,
                                concurrency=self.concurrency)

    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        images = list(images)
        if any(image.by_tag for image in images):
            raise ValueError("a v2 registry deletes by digest only")
        return dict(zip(images, self._map(lambda image: self._delete(repository, image.digest), images)))

    def _delete(self, repository: str, digest: str) -> Deletion:
        try:
            deleted = self.http.delete_manifest(repository, digest)
        except RegistryError as exc:  # 401/403 and 405 refused; unreachable, 5xx and 429 to retry
            return Deletion.from_error(exc)
        if not deleted:
            return Deletion.gone("already gone from the registry (404)")
        return Deletion.deleted("manifest deleted")
