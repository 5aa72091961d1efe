"""GitHub's REST API for container packages (api.github.com) for the tests, which have no GitHub: exactly the requests
dockersupport sends, answered as GitHub documents them (docs.github.com/rest/packages, API version 2022-11-28):

- `GET /user` → `{"login", ...}` with `X-OAuth-Scopes: <scopes>` for a classic token (none for a fine-grained one);
- `GET /users/{username}` → `{"login", "id", "type": "User" | "Organization"}`; 404 `{"message": "Not Found"}`;
- `GET /orgs/{org}/packages/container/{package_name}/versions?per_page=N&page=P` (or `/users/{username}/...`: the
  owner's kind must match) → 200 `[{"id", "name": digest, "url", "metadata": {"package_type": "container",
  "container": {"tags": [...]}}}]`, with `Link: <...>; rel="next"` while there are more; 404 unknown package;
- `DELETE /orgs/{org}/packages/container/{package_name}/versions/{package_version_id}` (or `/users/...`) → 204;
  404 unknown; 403 without `delete:packages`.
A package the token's user cannot see is answered as one that does not exist (404 `Package not found.`).
A package name with slashes comes URL-encoded (`%2F`) in one path segment. Every request must carry
`Authorization: Bearer <a known token>` (else 401 `{"message": "Bad credentials"}`) and
`X-GitHub-Api-Version: 2022-11-28` (else 400).
"""

import hashlib
import json
import os
import re
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

from .registry import Registry
from .stand_in import Answer, ScriptedService, StandIn

API_VERSION = "2022-11-28"
DOCS = "https://docs.github.com/rest/packages/packages"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_PACKAGE = re.compile(r"^/(?P<kind>orgs|users)/(?P<owner>[^/]+)/packages/container/(?P<package>[^/]+)/versions"
                      r"(?:/(?P<id>[^/]+))?$")


def _json(status: int, body, headers=None) -> Answer:
    return Answer(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                  json.dumps(body).encode())


def _message(status: int, message: str) -> Answer:
    return _json(status, {"message": message, "documentation_url": DOCS, "status": str(status)})


class GitHubPackages(ScriptedService):
    """`GitHubPackages(tokens={token: (login, scopes or None)}, owners={name: "User" | "Organization"})`, started with
    `with`, on `host`.

    `.push(owner, package, digest, *tags)` adds a version (its id); `.versions[(owner, package)]` is id → (digest,
    tags); `.deleted` the (owner, package, id) deleted in order; `.answers[(method, path prefix)]` an Answer given
    instead; `.next_base` the scheme and host its Link headers name (a hostile one, for the tests); `.unseen[login]`
    the (owner, package) that user cannot see."""

    def __init__(self, *, tokens: dict[str, tuple[str, str | None]], owners: dict[str, str], host: str = "127.0.0.9",
                 page_size: int | None = None):
        self.tokens, self.owners = tokens, owners
        self.versions: dict[tuple[str, str], dict[int, tuple[str, list[str]]]] = {}
        self.deleted: list[tuple[str, str, int]] = []
        self.answers: dict[tuple[str, str], Answer] = {}
        self.next_base = ""
        self.unseen: dict[str, set[tuple[str, str]]] = {}
        self.page_size = page_size  # at most this many a page, whatever per_page asks
        self._next_id = 1000
        self.stand_in = StandIn(host, self._answer)

    def push(self, owner: str, package: str, digest: str, *tags: str) -> int:
        versions = self.versions.setdefault((owner, package), {})
        for number, (other, other_tags) in versions.items():  # a tag names one version
            versions[number] = (other, [t for t in other_tags if t not in tags])
        self._next_id += 1
        versions[self._next_id] = (digest, list(tags))
        return self._next_id

    def digests(self, owner: str, package: str) -> dict[str, list[str]]:
        return {digest: tags for digest, tags in self.versions.get((owner, package), {}).values()}

    # --- the wire ---------------------------------------------------------------------------------

    def _answer(self, recorded) -> Answer:
        parts = urlsplit(recorded.path)
        for (method, prefix), answer in self.answers.items():
            if recorded.method == method and parts.path.startswith(prefix):
                return answer
        if recorded.headers.get("X-GitHub-Api-Version") != API_VERSION:
            return _message(400, "Invalid API version")
        authorization = recorded.headers.get("Authorization", "")
        token = self.tokens.get(authorization.removeprefix("Bearer ")) if authorization.startswith("Bearer ") else None
        if token is None:
            return _message(401, "Bad credentials" if authorization else "Requires authentication")
        login, scopes = token
        if parts.path == "/user" and recorded.method == "GET":
            headers = {"X-OAuth-Scopes": scopes} if scopes is not None else {}
            return _json(200, {"login": login, "id": 1, "type": "User"}, headers)
        if parts.path.startswith("/users/") and parts.path.count("/") == 2 and recorded.method == "GET":
            name = parts.path.removeprefix("/users/")
            if name not in self.owners:
                return _message(404, "Not Found")
            return _json(200, {"login": name, "id": 2, "type": self.owners[name]})
        match = _PACKAGE.match(parts.path)
        if match is None:
            return _message(404, "Not Found")
        owner, package = match["owner"], unquote(match["package"])
        expected = "orgs" if self.owners.get(owner) == "Organization" else "users"
        versions = self.versions.get((owner, package))
        if match["kind"] != expected or versions is None or (owner, package) in self.unseen.get(login, ()):
            return _message(404, "Package not found.")
        if recorded.method == "GET" and match["id"] is None:
            return self._page(owner, package, versions, parts, recorded)
        if recorded.method == "DELETE" and match["id"] is not None:
            if "delete:packages" not in (scopes or "delete:packages").split(", "):
                return _message(403, "You need at least delete:packages scope to perform this action.")
            number = int(match["id"]) if match["id"].isdigit() else -1
            if number not in versions:
                return _message(404, "Package version not found.")
            del versions[number]
            self.deleted.append((owner, package, number))
            return Answer(204)
        return _message(404, "Not Found")

    def _page(self, owner, package, versions, parts, recorded) -> Answer:
        query = parse_qs(parts.query)
        size = min(int(query.get("per_page", ["30"])[0]), 100, self.page_size or 100)
        page = int(query.get("page", ["1"])[0])
        numbers = sorted(versions, reverse=True)  # newest first
        chunk = numbers[(page - 1) * size:page * size]
        base = self.next_base or f"http://{recorded.headers.get('Host', self.address)}"
        headers = {}
        if page * size < len(numbers):
            headers["Link"] = f'<{base}{parts.path}?per_page={size}&page={page + 1}>; rel="next"'
        kind = "orgs" if self.owners.get(owner) == "Organization" else "users"
        return _json(200, [{
            "id": number, "name": versions[number][0],
            "url": f"https://api.github.com/{kind}/{owner}/packages/container/{package}/versions/{number}",
            "package_html_url": f"https://github.com/{kind}/{owner}/packages/container/package/{package}",
            "metadata": {"package_type": "container", "container": {"tags": list(versions[number][1])}},
        } for number in chunk], headers)


class GhcrRegistry(Registry):
    """Debian's docker-registry standing for ghcr.io, whose logins are GitHub users with their tokens: `users` are
    further (username, token) logins besides its own, and `push_image` / `push_index` put small OCI images and
    multi-platform indexes in it (what a build's push would), giving their digests."""

    def __init__(self, users: dict[str, str], **kwargs):
        super().__init__(**kwargs)
        self.users = users

    def _prepare(self):
        import bcrypt

        super()._prepare()
        with open(os.path.join(self.root, "htpasswd"), "a") as f:
            for username, token in self.users.items():
                f.write(f"{username}:{bcrypt.hashpw(token.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")

    def _http(self, method: str, path: str, **kwargs):
        import requests

        response = requests.request(method, self.url + path, auth=(self.username, self.password), timeout=10, **kwargs)
        assert response.status_code in (201, 202), f"{method} {path}: {response.status_code} {response.text}"
        return response

    def _blob(self, repository: str, data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = self._http("POST", f"/v2/{repository}/blobs/uploads/").headers["Location"]
        location = location.removeprefix(self.url)
        self._http("PUT", location + ("&" if "?" in location else "?") + f"digest={digest}", data=data,
                   headers={"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(data)}

    def _manifest(self, repository: str, manifest: dict, tag: str | None) -> tuple[str, int]:
        body = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self._http("PUT", f"/v2/{repository}/manifests/{tag or digest}", data=body,
                   headers={"Content-Type": manifest["mediaType"]})
        return digest, len(body)

    def push_image(self, repository: str, tag: str | None = None, *, platform: str = "linux/amd64") -> str:
        """An image of its own (a random layer): its digest."""
        os_name, _, architecture = platform.partition("/")
        config = self._blob(repository, json.dumps({"architecture": architecture, "os": os_name,
                                                    "rootfs": {"type": "layers", "diff_ids": []}}).encode())
        layer = self._blob(repository, uuid.uuid4().bytes)
        digest, _ = self._manifest(repository, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}, tag)
        return digest

    def tag(self, repository: str, digest: str, tag: str) -> None:
        """Puts one more tag on a pushed manifest (what `docker buildx imagetools create -t` or a UI would)."""
        import requests

        response = requests.get(f"{self.url}/v2/{repository}/manifests/{digest}", timeout=10,
                                auth=(self.username, self.password), headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
        assert response.status_code == 200, f"GET {repository}@{digest}: {response.status_code}"
        self._http("PUT", f"/v2/{repository}/manifests/{tag}", data=response.content,
                   headers={"Content-Type": response.headers["Content-Type"]})

    def push_index(self, repository: str, tag: str | None, children: list[str]) -> str:
        """An OCI index of already pushed images (their digests), one platform each: its digest."""
        descriptors = []
        import requests

        for number, child in enumerate(children):
            size = len(requests.get(f"{self.url}/v2/{repository}/manifests/{child}", timeout=10,
                                    auth=(self.username, self.password), headers={"Accept": OCI_MANIFEST}).content)
            descriptors.append({"mediaType": OCI_MANIFEST, "digest": child, "size": size,
                                "platform": {"os": "linux", "architecture": f"arch{number}"}})
        digest, _ = self._manifest(repository, {"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                "manifests": descriptors}, tag)
        return digest
