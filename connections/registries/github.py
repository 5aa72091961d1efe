"""GitHub's container registry (ghcr.io) refuses manifest DELETE, so GitHubRegistry deletes package versions through
GitHub's REST API: https://api.github.com for ghcr.io, always; DOCKERSUPPORT_GITHUB_API for the registries named in
DOCKERSUPPORT_GITHUB_REGISTRIES (GitHub Enterprise Server's `containers.<host>`, API `https://<host>/api/v3`; tests'
doubles) alone. That API is the one host besides the registry and its token service that receives the connection's
token.

An image `ghcr.io/<owner>/<package>` is the container package `<package>` (slashes URL-encoded as %2F) of the user or
organization `<owner>`; each digest is a package version whose `name` is the digest and `metadata.container.tags` its
tags. A multi-platform image is an index version (tagged) and one untagged version per platform: clean-up reads the
index from the registry (v2, related.py) and deletes its children with it unless something kept holds them.

The API is trusted to map digests to version ids, not for what is there: a version's tags are the API's and the
registry's own (`GET /v2/<name>/tags/list`, its metadata can lag), and a 404 (GitHub's answer for a package the
token's user cannot see, too) counts as gone only when the registry no longer holds the manifest either; else the
answer is "refused", and the next connection is tried.

Requests (REST API version 2022-11-28: `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28`,
`Authorization: Bearer <token>`):
- `GET /users/{owner}` → `{"type": "User" | "Organization"}`, once per owner: which of the two paths below;
- `GET /orgs/{owner}/packages/container/{package}/versions?per_page=100&page=N` (or `/users/{owner}/...`) →
  `[{"id", "name", "metadata": {"container": {"tags": [...]}}}]`, the next page while the `Link` header has a
  rel="next";
- `DELETE /orgs/{owner}/packages/container/{package}/versions/{id}` (or `/users/{owner}/...`) → 204.
A personal access token (classic) needs `read:packages` and `delete:packages` (and `write:packages` to push); for an
organization's package, its user needs admin permission on the package.
"""

from collections.abc import Iterable, Iterator
from urllib.parse import quote

from django.conf import settings

from agent.references import registry_identity

from .access import GITHUB_REGISTRY
from .base import (
    Deletion,
    ImageRef,
    RefusedByRegistry,
    Registry,
    RegistryCredentials,
    RegistryError,
    TransientRegistryError,
    is_digest,
    is_tag,
)
from .hosted_api import MAX_PAGES, ApiSession, link_next
from .v2_registry import V2Registry

NAME = "GitHub's API"
PAGE_SIZE = 100  # the most GitHub gives in one page
HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
GITHUB_API = "https://api.github.com"


def api_base(address: str) -> str:
    """GitHub's API for ghcr.io whatever the settings say (its tokens go to GitHub alone); DOCKERSUPPORT_GITHUB_API
    for the other registries treated as GitHub's (DOCKERSUPPORT_GITHUB_REGISTRIES: GHES, tests' doubles)."""
    if registry_identity(address) == GITHUB_REGISTRY:
        return GITHUB_API
    return getattr(settings, "DOCKERSUPPORT_GITHUB_API", "") or GITHUB_API


class GitHubRegistry(Registry):
    """ghcr.io: logins, digests and indexes through the registry (v2), package versions through GitHub's API."""

    deletes_by_tag = False  # a version is a digest: deleting it deletes every tag on it

    def __init__(self, address: str, credentials: RegistryCredentials, *, concurrency: int = 10):
        self.registry = V2Registry(address, credentials, concurrency=concurrency)
        self.username, self._token = credentials.username, credentials.password
        self.api = ApiSession(api_base(address), NAME, headers=HEADERS, secrets=[credentials.password])
        self._owners: dict[str, str] = {}  # owner → "orgs" or "users"
        self._versions: dict[str, dict[str, int]] = {}  # repository → digest → version id, as last listed

    def close(self) -> None:
        self.api.close()
        self.registry.close()

    def _call(self, method: str, path: str):
        if not self._token:
            raise RefusedByRegistry(f"{NAME} deletes package versions with a token: this connection has none")
        return self.api.request(method, path, authorization=f"Bearer {self._token}")

    # Login ----------------------------------------------------------------------------------------
    def check_login(self) -> Iterator[str]:
        """The registry's login, then what GitHub's API says of the token (`GET /user`): whose it is and, for a
        classic token, whether its scopes allow deleting package versions. Neither fails the test."""
        yield from self.registry.check_login()
        if not self._token:
            return
        try:
            response = self._call("GET", "/user")
        except RegistryError as exc:
            yield f"clean-up cannot ask {NAME}: {exc}"
            return
        if response.status_code != 200:
            # An installation token (GitHub Actions' GITHUB_TOKEN, an app's) is not a user's: /user is not its.
            yield (f"{NAME} did not say whose the token is (GET /user: {self.api.error_text(response)}): whether it "
                   "may delete package versions shows at clean-up")
            return
        try:
            body = response.json()
        except ValueError:
            body = {}
        login = body.get("login", "?") if isinstance(body, dict) else "?"
        scopes = response.headers.get("X-OAuth-Scopes")
        if scopes is None:
            yield (f"{NAME} accepted the token of '{login}' (a fine-grained token or app: its package permissions "
                   "are not listed; deleting needs Packages: read and delete)")
            return
        granted = {scope.strip() for scope in scopes.split(",") if scope.strip()}
        listed = ", ".join(sorted(granted)) or "none"
        if "delete:packages" in granted:
            yield f"{NAME} accepted the token of '{login}' (scopes: {listed}): clean-up can delete package versions"
        else:
            yield (f"{NAME} accepted the token of '{login}' (scopes: {listed}); without delete:packages clean-up "
                   "cannot delete package versions with it")

    # Reading --------------------------------------------------------------------------------------
    def digest_of(self, repository: str, tag: str) -> str | None:
        return self.registry.digest_of(repository, tag)

    def related_graph(self, repository: str, *, wanted: Iterable[str], kept: Iterable[str], tags: dict[str, str]):
        """An index's children and referrers, read from the registry (ghcr.io speaks v2 for reading)."""
        return self.registry.related_graph(repository, wanted=wanted, kept=kept, tags=tags)

    def _package(self, repository: str) -> str:
        """`/orgs/<owner>/packages/container/<package>` (or `/users/...`) of `<owner>/<package>`."""
        owner, _, package = repository.partition("/")
        if not owner or not package:
            raise RegistryError(f"'{repository}' is not a GitHub package (owner/name): nothing is asked about it")
        if owner not in self._owners:
            response = self._call("GET", f"/users/{owner}")
            if response.status_code == 404:
                raise RegistryError(f"{NAME} knows no user or organization '{owner}' (GET /users/{owner}: HTTP 404)")
            self._raise(response, f"GET /users/{owner}")
            body = self.api.json(response, f"GET /users/{owner}")
            kind = body.get("type") if isinstance(body, dict) else None
            self._owners[owner] = "orgs" if kind == "Organization" else "users"
        return f"/{self._owners[owner]}/{owner}/packages/container/{quote(package, safe='')}"

    def tags_by_digest(self, repository: str) -> dict[str, set[str]]:
        """Every version of the package, tagged or not (an index's children are untagged versions), with the tags
        the API gives it and those the registry's tags point to: the API's metadata can lag behind the registry, and
        a tag missing there (`latest`, a protected one) must still keep its digest.

        Raises RefusedByRegistry when the API knows no such package (404) while the registry has tags in it: GitHub
        answers so for a package the token's user cannot see."""
        registry_tags = self.registry.tags_by_digest(repository)
        result = self._versions_listed(repository)
        if result is None:
            if registry_tags:
                raise RefusedByRegistry(f"{NAME} knows no package {repository} (HTTP 404) while the registry holds "
                                        f"{sum(map(len, registry_tags.values()))} tag(s) of it: this token cannot "
                                        "see the package (its user needs access to it)")
            result = {}
        for digest, tags in registry_tags.items():
            result.setdefault(digest, set()).update(tags)
        return result

    def _versions_listed(self, repository: str) -> dict[str, set[str]] | None:
        """The API's versions of the package, digest → tags (None for a 404: no such package, or not for this
        token); remembers each digest's version id for deleting."""
        listing = f"{self._package(repository)}/versions"
        what = f"listing the versions of {repository}"
        page = 1
        result: dict[str, set[str]] = {}
        versions: dict[str, int] = {}
        while page:
            if page > MAX_PAGES:
                raise RegistryError(f"{what}: {NAME}'s pages do not end ({MAX_PAGES} pages read)")
            response = self._call("GET", f"{listing}?per_page={PAGE_SIZE}&page={page}")
            if response.status_code == 404 and page == 1:
                self._versions[repository] = {}
                return None
            self._raise(response, what)
            page_versions = self.api.json(response, what)
            if not isinstance(page_versions, list):
                raise RegistryError(f"{what}: {NAME}'s answer is not a list of versions")
            for version in page_versions:
                digest, number, tags = _version(version)
                if digest:
                    versions[digest] = number
                    result.setdefault(digest, set()).update(tags)
            # The next page is asked of the API by its number: GitHub's Link URLs name owners by their numeric ID
            # (/organizations/<id>/...), and whatever host or path a link names, only that there is one counts.
            page = page + 1 if link_next(response) and page_versions else 0
        self._versions[repository] = versions
        return result

    def _raise(self, response, what: str) -> None:
        """GitHub answers a rate limit with 403 (or 429) and `x-ratelimit-remaining: 0` or `retry-after`, and a
        secondary rate limit with a 403 that may have neither, only its message saying so: to retry."""
        if response.status_code == 403 and (response.headers.get("x-ratelimit-remaining") == "0"
                                             or "retry-after" in response.headers or _says_rate_limit(response)):
            raise TransientRegistryError(f"{what}: {NAME} is rate limiting: {self.api.error_text(response)}")
        self.api.raise_for_status(response, what)

    def _gone(self, repository: str, digest: str, reason: str) -> Deletion:
        """Gone, when the registry no longer holds the manifest either; else refused: GitHub's API answers 404 for
        what the token's user cannot see, and another connection may."""
        if self.registry.digest_of(repository, digest) is None:
            return Deletion.gone(reason)
        return Deletion.refused(f"this token cannot see the package version of {repository}@{digest} (or {NAME} "
                                f"does not list it yet): {reason} according to {NAME}, yet the registry still "
                                "holds it")

    # Deleting -------------------------------------------------------------------------------------
    def delete(self, repository: str, images: Iterable[ImageRef]) -> dict[ImageRef, Deletion]:
        images = list(dict.fromkeys(images))
        if any(image.by_tag for image in images):
            raise ValueError("GitHub deletes package versions, that is digests, not tags")
        outcomes = {}
        for image in images:
            try:
                if repository not in self._versions:
                    self._versions_listed(repository)
                outcomes[image] = self._delete(repository, image.digest)
            except RegistryError as exc:
                outcomes[image] = Deletion.from_error(exc)
        return outcomes

    def _delete(self, repository: str, digest: str) -> Deletion:
        number = self._versions[repository].get(digest)
        if number is None:
            return self._gone(repository, digest, f"no version of package {repository} has this digest: already "
                                                  "deleted")
        path = f"{self._package(repository)}/versions/{number}"
        response = self._call("DELETE", path)
        if 200 <= response.status_code < 300:
            return Deletion.deleted(f"package version {number} deleted through {NAME} (DELETE {path}: "
                                    f"HTTP {response.status_code})")
        if response.status_code == 404:
            return self._gone(repository, digest, f"package version {number} was already gone (DELETE {path}: "
                                                  "HTTP 404)")
        try:
            self._raise(response, f"DELETE {path}")
        except TransientRegistryError as exc:
            return Deletion.retry(str(exc))
        except RegistryError as exc:
            if response.status_code in (401, 403):
                return Deletion.refused(f"{exc}; the token needs delete:packages (and admin permission on the "
                                        "package)")
            return Deletion.from_error(exc)
        return Deletion.failed(f"DELETE {path}: {NAME} answered {self.api.error_text(response)}")


def _says_rate_limit(response) -> bool:
    """Whether an answer's message speaks of a rate limit (`You have exceeded a secondary rate limit ...`)."""
    try:
        body = response.json()
    except ValueError:
        return False
    message = body.get("message") if isinstance(body, dict) else None
    return isinstance(message, str) and "rate limit" in message.lower()


def _version(version) -> tuple[str, int, set[str]]:
    """(digest, id, tags) of one package version; ("", 0, set()) for anything else."""
    if not isinstance(version, dict):
        return "", 0, set()
    digest, number = version.get("name"), version.get("id")
    if not is_digest(digest) or not isinstance(number, int) or isinstance(number, bool):
        return "", 0, set()
    metadata = version.get("metadata")
    container = metadata.get("container") if isinstance(metadata, dict) else None
    tags = container.get("tags") if isinstance(container, dict) else None
    return digest, number, {tag for tag in tags or () if is_tag(tag)}
