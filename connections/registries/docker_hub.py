"""Docker Hub: the registry (registry-1.docker.io) refuses manifest DELETE (HTTP 405), so DockerHubRegistry deletes
tags through Docker Hub's own API, on https://hub.docker.com for docker.io whatever the settings say
(DOCKERSUPPORT_DOCKER_HUB_API is the API of the registries named in DOCKERSUPPORT_DOCKER_HUB_REGISTRIES alone: tests'
doubles): the one host besides the registry and its token service (auth.docker.io) that receives the connection's
credentials.

Requests, as Docker documents them (docs.docker.com/reference/api/hub) and Docker's hub-tool sends them:
- `POST /v2/auth/token` `{"identifier": username, "secret": password or personal access token}` →
  `{"access_token": JWT}` (valid 10 minutes), sent after as `Authorization: Bearer <token>`;
- `GET /v2/namespaces/{namespace}/repositories/{repository}/tags?page_size=100&page=N` → `{"count", "next",
  "results": [{"name", "digest", ...}]}`, the next page while `next` names one;
- `GET /v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}` → `{"name", "digest", ...}`, each tag read
  again just before it is deleted;
- `DELETE /v2/repositories/{namespace}/{repository}/tags/{tag}/` → 204 (hub-tool's `RemoveTag`).

Deleting a tag removes that tag alone (`deletes_by_tag`): the image stays for its other tags, and a manifest whose
last tag went stays on Docker Hub untagged (Docker Hub's own untagged-image clean-up takes it). "Deleting a digest"
deletes every tag pointing to it, each of which clean-up checked belongs to the deletion. A personal access token
needs the scope "Read, Write, Delete" to delete tags; with less, Docker Hub answers 401/403 (refused: the image goes
to the next connection).

Docker Hub answers 404 for a private repository the account cannot see, too: a 404 (for the tag list, a tag) counts
as gone only when the registry (v2, with the same credentials) no longer has it either; else the answer is
"refused", and the next connection is tried. A tag read without a digest is not deleted (failed, saying so).
"""

from collections.abc import Iterable, Iterator

from django.conf import settings

from agent.references import DOCKER_HUB, registry_identity

from .base import (
    Deletion,
    DeletionResult,
    ImageRef,
    RefusedByRegistry,
    Registry,
    RegistryCredentials,
    RegistryError,
    TransientRegistryError,
    is_digest,
    is_tag,
)
from .hosted_api import MAX_PAGES, ApiSession
from .v2_registry import V2Registry

NAME = "Docker Hub's API"
PAGE_SIZE = 100  # the most Docker Hub gives in one page
HUB_API = "https://hub.docker.com"


def api_base(address: str) -> str:
    """Docker Hub's API for docker.io whatever the settings say (its credentials go to Docker alone);
    DOCKERSUPPORT_DOCKER_HUB_API for the other registries treated as Docker Hub (DOCKERSUPPORT_DOCKER_HUB_REGISTRIES:
    tests' doubles)."""
    if registry_identity(address) == DOCKER_HUB:
        return HUB_API
    return getattr(settings, "DOCKERSUPPORT_DOCKER_HUB_API", "") or HUB_API


class DockerHubRegistry(Registry):
    """Docker Hub: logins and digests through the registry (v2), tags listed and deleted through Docker Hub's API."""

    deletes_by_tag = True

    def __init__(self, address: str, credentials: RegistryCredentials, *, concurrency: int = 10):
        self.registry = V2Registry(address, credentials, concurrency=concurrency)
        self.username, self._password = credentials.username, credentials.password
        self.api = ApiSession(api_base(address), NAME, headers={"Accept": "application/json"},
                              secrets=[credentials.password])
        self._token = ""
        self._tags: dict[str, dict[str, str]] = {}  # repository → tag → digest, as last listed

    def close(self) -> None:
        self.api.close()
        self.registry.close()

    # Login ----------------------------------------------------------------------------------------
    def check_login(self) -> Iterator[str]:
        """The registry's login, then whether Docker Hub's API gives a token for deleting tags (a refusal there
        does not fail the test: builds log in to the registry alone)."""
        yield from self.registry.check_login()
        if not self.username:
            yield f"no username: {NAME} is not asked, and clean-up cannot delete tags with this connection"
            return
        try:
            self._login()
        except RegistryError as exc:
            yield f"clean-up cannot delete tags with this connection: {exc}"
            return
        yield (f"{NAME} ({self.api.base}) gave '{self.username}' a token for deleting tags (a personal access token "
               "needs the scope Read, Write, Delete for that)")

    def _login(self) -> str:
        if not self.username or not self._password:
            raise RefusedByRegistry(f"{NAME} deletes tags for an account: this connection has no username and "
                                    "password (or personal access token)")
        response = self.api.request("POST", "/v2/auth/token", json={"identifier": self.username,
                                                                     "secret": self._password})
        if response.status_code in (400, 401, 403):
            raise RefusedByRegistry(f"{NAME} refused the credentials of '{self.username}' (POST /v2/auth/token): "
                                    f"{self.api.error_text(response)}")
        self.api.raise_for_status(response, "POST /v2/auth/token")
        body = self.api.json(response, "POST /v2/auth/token")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{NAME} answered POST /v2/auth/token without an access token")
        self._token = token
        self.api.secrets.append(token)
        return token

    def _call(self, method: str, path: str):
        """A request with the bearer token; one new token when Docker Hub says the last one expired (401)."""
        if not self._token:
            self._login()
        response = self.api.request(method, path, authorization=f"Bearer {self._token}")
        if response.status_code == 401:
            self._login()
            response = self.api.request(method, path, authorization=f"Bearer {self._token}")
        return response

    # Reading --------------------------------------------------------------------------------------
    def digest_of(self, repository: str, tag: str) -> str | None:
        return self.registry.digest_of(repository, tag)

    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        namespace, name = _split(repository)
        listing = f"/v2/namespaces/{namespace}/repositories/{name}/tags"
        what = f"listing the tags of {repository}"
        page, tags = 1, {}
        while page:
            if page > MAX_PAGES:
                raise RegistryError(f"{what}: {NAME}'s pages do not end ({MAX_PAGES} pages read)")
            response = self._call("GET", f"{listing}?page_size={PAGE_SIZE}&page={page}")
            if response.status_code == 404 and page == 1:
                self._unseen_check(repository)
                break  # no such repository (any more), the registry agrees: nothing of it to delete
            self.api.raise_for_status(response, what)
            body = self.api.json(response, what)
            results = body.get("results") if isinstance(body, dict) else None
            if not isinstance(results, list):
                raise RegistryError(f"{what}: {NAME}'s answer is not a tag list")
            for entry in results:
                if isinstance(entry, dict) and is_tag(entry.get("name")) and is_digest(entry.get("digest")):
                    tags[entry["name"]] = entry["digest"]
            # The next page is asked of the API by its number, whatever URL `next` gives: only that there is one.
            page = page + 1 if body.get("next") and results else 0
        self._tags[repository] = tags
        result: dict[str, set[str]] = {}
        for tag, digest in tags.items():
            result.setdefault(digest, set()).add(tag)
        return result

    def _unseen_check(self, repository: str) -> None:
        """After the API's 404 for a repository's tags: RefusedByRegistry if the registry still lists tags in it
        (Docker Hub answers 404 for a private repository the account cannot see); a registry refusing these
        credentials raises so itself."""
        held = self.registry.http.tags(repository)
        if held:
            raise RefusedByRegistry(f"{NAME} knows no repository {repository} (HTTP 404) while the registry holds "
                                    f"{len(held)} tag(s) of it: the account '{self.username}' cannot see the "
                                    "repository through the API")

    def _tag_gone(self, repository: str, tag: str, reason: str) -> Deletion:
        """Gone, when the registry no longer has the tag either; else refused (see _unseen_check)."""
        if self.registry.digest_of(repository, tag) is None:
            return Deletion.gone(reason)
        return Deletion.refused(f"{reason}, yet the registry still has {repository}:{tag}: the account "
                                f"'{self.username}' cannot see it through {NAME}")

    # Deleting -------------------------------------------------------------------------------------
    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        """A tag: that tag alone; a digest: every tag that pointed to it when the tags were last listed."""
        outcomes = {}
        for image in dict.fromkeys(images):
            try:
                if repository not in self._tags:
                    self.tags_by_digest(repository)
                if image.by_tag:
                    outcomes[image] = self._delete_tags(repository, {image.tag: self._tags[repository].get(image.tag)})
                else:
                    tags = {tag: digest for tag, digest in self._tags[repository].items() if digest == image.digest}
                    outcomes[image] = self._delete_tags(repository, tags)
            except RegistryError as exc:
                outcomes[image] = Deletion.from_error(exc)
        return outcomes

    def _delete_tags(self, repository: str, tags: dict[str, str | None]) -> Deletion:
        if not tags:
            return Deletion.gone(f"no tag of {repository} on Docker Hub points to it any more")
        answers = [self._delete_tag(repository, tag, digest) for tag, digest in sorted(tags.items())]
        for result in (DeletionResult.REFUSED, DeletionResult.RETRY, DeletionResult.FAILED):
            for answer in answers:
                if answer.result == result:
                    return answer
        reasons = "; ".join(answer.reason for answer in answers)
        if any(answer.result == DeletionResult.DELETED for answer in answers):
            return Deletion.deleted(reasons)
        return Deletion.gone(reasons)

    def _delete_tag(self, repository: str, tag: str, digest: str | None) -> Deletion:
        """Reads the tag again, then deletes it if it still points to the digest it was listed with."""
        namespace, name = _split(repository)
        try:
            current = self._call("GET", f"/v2/namespaces/{namespace}/repositories/{name}/tags/{tag}")
            if current.status_code == 404:
                return self._tag_gone(repository, tag, f"tag '{tag}' was already gone from Docker Hub (HTTP 404)")
            self.api.raise_for_status(current, f"reading tag '{tag}' of {repository}")
            body = self.api.json(current, f"reading tag '{tag}' of {repository}")
            now = body.get("digest") if isinstance(body, dict) else None
            if not is_digest(now):
                return Deletion.failed(f"{NAME} gave tag '{tag}' of {repository} without a digest: which image it "
                                       "points to now is unknown, so it was not deleted")
            if digest is None or now != digest:
                return Deletion.gone(f"tag '{tag}' now points to {now}: pushed again since, so not this image's any "
                                     "more and not deleted")
            path = f"/v2/repositories/{namespace}/{name}/tags/{tag}/"
            response = self._call("DELETE", path)
            if response.status_code == 404:
                return self._tag_gone(repository, tag, f"tag '{tag}' was already gone from Docker Hub (DELETE "
                                                       f"{path}: HTTP 404)")
        except TransientRegistryError as exc:
            return Deletion.retry(str(exc))
        except RegistryError as exc:
            return Deletion.from_error(exc)
        if response.status_code in (200, 202, 204):
            return Deletion.deleted(f"tag '{tag}' deleted through {NAME} (DELETE {path}: HTTP {response.status_code})")
        if response.status_code in (401, 403):
            return Deletion.refused(f"{NAME} refused to delete tag '{tag}' with the credentials of '{self.username}' "
                                    f"(DELETE {path}: {self.api.error_text(response)}); a personal access token "
                                    "needs the scope Read, Write, Delete")
        return Deletion.failed(f"{NAME} did not delete tag '{tag}' (DELETE {path}: {self.api.error_text(response)})")


def _split(repository: str) -> tuple[str, str]:
    """Docker Hub's repositories are `<namespace>/<name>`, one slash (official images: `library/<name>`)."""
    namespace, _, name = repository.partition("/")
    if not namespace or not name or "/" in name:
        raise RegistryError(f"'{repository}' is not a Docker Hub repository (namespace/name): nothing is asked about "
                            "it")
    return namespace, name
