"""A registry that has the OCI referrers API, as the distribution spec (v1.1) documents it, for what Debian's
docker-registry (distribution 2.8) lacks: `GET /v2/<name>/referrers/<digest>` answers 200 with an image index
(`application/vnd.oci.image.index.v1+json`) of descriptors (mediaType, digest, size, artifactType, annotations)
of the manifests whose `subject` is that digest — an empty one when there are none, never 404 — filtered by
`?artifactType=` (then saying so in `OCI-Filters-Applied`), a page of `page_size` at a time with a
`Link: <...>; rel="next"` to the next. Manifests by tag or digest (GET, HEAD, DELETE), the tag list, and
Basic auth, all in memory, on a StandIn of its own loopback address.

It can lie, for the tests of what we believe: `extra_referrers[subject]` adds descriptors to the API's answer,
`bodies[digest]` serves other bytes under a digest.
"""

import base64
import hashlib
import json
import re
from urllib.parse import parse_qs, quote, urlsplit

from .stand_in import Answer, ScriptedService, StandIn

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|referrers|tags)/(?P<reference>[^/]+)$")


def _json(status: int, body, headers=None) -> Answer:
    return Answer(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode())


def _error(status: int, code: str, message: str, headers=None) -> Answer:
    return _json(status, {"errors": [{"code": code, "message": message}]}, headers)


class ReferrersRegistry(ScriptedService):
    """`ReferrersRegistry("127.0.0.5")`, started with `with`: `.push(repository, manifest, tag=None)` stores a
    manifest (a dict) and gives its digest; `.address`, `.requests` (every request received, in order)."""

    def __init__(self, host: str = "127.0.0.5", *, username: str = "ci", password: str = "referrers-secret",
                 page_size: int = 2):
        self.username, self.password, self.page_size = username, password, page_size
        self.manifests: dict[str, dict[str, tuple[str, bytes]]] = {}  # repository → digest → (media type, body)
        self.tags: dict[str, dict[str, str]] = {}  # repository → tag → digest
        self.extra_referrers: dict[str, list[dict]] = {}  # subject → descriptors the API adds: a lying registry
        self.bodies: dict[str, bytes] = {}  # digest → what is served instead of its manifest: a lying registry
        self.stand_in = StandIn(host, self._answer)


    # Content -------------------------------------------------------------------------------------
    def push(self, repository: str, manifest: dict, tag: str | None = None) -> str:
        body = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests.setdefault(repository, {})[digest] = (manifest.get("mediaType", OCI_MANIFEST), body)
        if tag:
            self.tags.setdefault(repository, {})[tag] = digest
        return digest

    def descriptor(self, repository: str, digest: str) -> dict:
        """The referrers API's descriptor of a stored manifest: its artifactType, else its config's media type."""
        media_type, body = self.manifests[repository][digest]
        manifest = json.loads(body)
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(body)}
        artifact_type = manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType")
        if artifact_type:
            descriptor["artifactType"] = artifact_type
        if manifest.get("annotations"):
            descriptor["annotations"] = manifest["annotations"]
        return descriptor

    def referrers_of(self, repository: str, subject: str) -> list[dict]:
        found = [self.descriptor(repository, digest) for digest, (_, body) in self.manifests.get(repository, {}).items()
                 if (json.loads(body).get("subject") or {}).get("digest") == subject]
        found += self.extra_referrers.get(subject, [])
        return sorted(found, key=lambda d: d["digest"])

    # HTTP ----------------------------------------------------------------------------------------
    def _authorized(self, recorded) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return recorded.headers.get("Authorization") == f"Basic {expected}"

    def _answer(self, recorded) -> Answer:
        if not self._authorized(recorded):
            return _error(401, "UNAUTHORIZED", "authentication required",
                          {"WWW-Authenticate": 'Basic realm="referrers-registry"'})
        url = urlsplit(recorded.path)
        if url.path == "/v2/":
            return _json(200, {})
        match = _PATH.match(url.path)
        if not match:
            return _error(404, "NOT_FOUND", "no such route")
        name, kind, reference = match["name"], match["kind"], match["reference"]
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if kind == "referrers" and recorded.method == "GET":
            return self._referrers(name, reference, query)
        if kind == "tags" and reference == "list" and recorded.method == "GET":
            return _json(200, {"name": name, "tags": sorted(self.tags.get(name, {}))})
        if kind == "manifests":
            return self._manifest(recorded.method, name, reference)
        return _error(405, "UNSUPPORTED", "the operation is unsupported")

    def _manifest(self, method: str, name: str, reference: str) -> Answer:
        digest = reference if reference.startswith("sha256:") else self.tags.get(name, {}).get(reference, "")
        stored = self.manifests.get(name, {}).get(digest)
        if stored is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        if method == "DELETE":
            del self.manifests[name][digest]
            self.tags[name] = {t: d for t, d in self.tags.get(name, {}).items() if d != digest}
            return Answer(202)
        media_type, body = stored
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        return Answer(200, headers, self.bodies.get(digest, body))

    def _referrers(self, name: str, subject: str, query: dict) -> Answer:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", subject):
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        found = self.referrers_of(name, subject)
        headers = {"Content-Type": OCI_INDEX}
        if "artifactType" in query:
            found = [d for d in found if d.get("artifactType") == query["artifactType"]]
            headers["OCI-Filters-Applied"] = "artifactType"
        if query.get("last"):
            found = [d for d in found if d["digest"] > query["last"]]
        page = found[:self.page_size]
        if len(found) > self.page_size:
            extra = f"&artifactType={quote(query['artifactType'], safe='')}" if "artifactType" in query else ""
            headers["Link"] = (f'<http://{self.address}/v2/{name}/referrers/{subject}?n={self.page_size}'
                               f'&last={page[-1]["digest"]}{extra}>; rel="next"')
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page}
        return Answer(200, headers, json.dumps(body).encode())
