"""What a manifest brings along in a v2 registry: the child manifests of an image index (manifest list), and its
referrers (signatures, attestations, SBOMs whose `subject` it is), read for clean-up just before it deletes.

Referrers are found through the OCI referrers API (`GET /v2/<name>/referrers/<digest>`) where the registry has it,
the referrers tag schema (tag `sha256-<hex>`: an index of them, written by clients where the registry has no API,
and kept by registries upgraded to one), and cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`.

Nothing a registry says is taken on its word: a manifest is used only when its body hashes to the digest asked (a
lying registry must not make us delete something else); a digest only when it has the form of one (it goes into
URL paths); a referrer only when its own manifest names the subject, or, for cosign's tags (older than `subject`),
when the tag's name does and its manifest is a cosign artifact of that tag's kind naming no other subject: its layers
all of cosign's types for the suffix (COSIGN_LAYER_TYPES), or carrying cosign's signature annotation. Any other image
a build points such a tag at (someone else's, by its digest) is not taken along.

What a registry lists is bounded: at most MAX_DESCRIPTORS descriptors in one manifest or page, MAX_READS referrers
listed for one subject and manifests read for one repository; beyond that, RegistryError (nothing is deleted on a
partial reading).
"""

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests

from .base import MANIFEST_TYPES, RefusedByRegistry, RegistryError, is_digest
from .v2 import RegistrySession, error_text

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
# The OCI artifact manifest (image-spec 1.1 release candidates) can carry a subject too.
ACCEPT = MANIFEST_TYPES + ", application/vnd.oci.artifact.manifest.v1+json"
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)
MAX_PAGES = 100  # pages of the referrers API followed for one subject
MAX_DESCRIPTORS = 10_000  # descriptors in one manifest or one page of the referrers API
MAX_READS = 20_000  # manifests read for one repository's graph: a registry cannot keep us reading forever
REFERRER_DEPTH = 3  # referrers of referrers ... followed this deep from a digest to delete
# What cosign stores under each of its tags: the media types of its layers, one kind per tag suffix.
COSIGN_LAYER_TYPES = {
    ".sig": frozenset({"application/vnd.dev.cosign.simplesigning.v1+json"}),
    ".att": frozenset({"application/vnd.dsse.envelope.v1+json"}),
    ".sbom": frozenset({"text/spdx", "text/spdx+xml", "text/spdx+json", "application/spdx+json",
                        "application/vnd.cyclonedx", "application/vnd.cyclonedx+xml", "application/vnd.cyclonedx+json",
                        "application/vnd.syft+json"}),
}
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag of a digest: `<alg>-<encoded>`, the encoded part cut to 64 characters."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded[:64]}"


def cosign_tags(digest: str) -> list[str]:
    algorithm, _, encoded = digest.partition(":")
    return [f"{algorithm}-{encoded}{suffix}" for suffix in COSIGN_SUFFIXES]


@dataclass(frozen=True)
class Manifest:
    """What clean-up needs of one manifest: whether it is an index, its children, the subject it names."""

    digest: str
    media_type: str
    children: tuple[str, ...] = ()  # an index's child manifests, in its order
    subject: str = ""  # the digest its `subject` names, "" when none
    nested: tuple[str, ...] = ()  # the children its descriptors call indexes (or do not type): read to go down
    cosign: frozenset[str] = frozenset()  # the cosign tag suffixes (".sig", ...) whose artifact it looks like

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _raise_unless_ok(session: RegistrySession, response: requests.Response, what: str) -> None:
    quote = (urlsplit(response.url).hostname or "") == session.host  # another host's words are not quoted
    if response.status_code in (401, 403):
        raise RefusedByRegistry(f"{what}: the registry refused the credentials: {error_text(response, quote=quote)}")
    if response.status_code != 200:
        raise RegistryError(f"{what}: {error_text(response, quote=quote)}")


def _json_object(session: RegistrySession, body: bytes, what: str) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RegistryError(f"{session.url}: {what} is not a JSON object")
    return data


def _descriptors(session: RegistrySession, entries, what: str) -> tuple[list[str], list[str], list]:
    """The well-formed digests of a list of descriptors, each once, in order; those of them whose descriptor types
    them as an index or does not type them; and the descriptors left out (no well-formed digest), for the caller's
    one warning. More than MAX_DESCRIPTORS is refused: RegistryError."""
    entries = entries if isinstance(entries, list) else []
    if len(entries) > MAX_DESCRIPTORS:
        raise RegistryError(f"{session.url}: {what} lists {len(entries)} descriptors, more than {MAX_DESCRIPTORS}; "
                            "nothing is deleted on its word")
    found: dict[str, None] = {}
    nested: dict[str, None] = {}
    bad = []
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not is_digest(digest):
            bad.append(entry)
            continue
        found[digest] = None
        if entry.get("mediaType") in (*INDEX_TYPES, None, ""):
            nested[digest] = None
    return list(found), list(nested), bad


def _warn_left_out(what: str, bad: list) -> None:
    if bad:
        log.warning("%s: %d descriptor(s) without a well-formed digest were left out, the first: %.100r",
                    what, len(bad), bad[0])


def _cosign_kinds(body: dict) -> frozenset[str]:
    """The cosign tag suffixes whose artifact a manifest's body looks like: every layer (one at least) of that kind's
    media types, or (any kind) cosign's signature annotation on a layer or on the manifest."""
    layers = body.get("layers")
    layers = layers if isinstance(layers, list) and all(isinstance(layer, dict) for layer in layers) else []
    if any(isinstance(annotations := entry.get("annotations"), dict) and COSIGN_SIGNATURE_ANNOTATION in annotations
           for entry in (body, *layers)):
        return frozenset(COSIGN_LAYER_TYPES)
    types = {layer.get("mediaType") for layer in layers}
    return frozenset(suffix for suffix, allowed in COSIGN_LAYER_TYPES.items() if types and types <= allowed)


def manifest_read(session: RegistrySession, repository: str, digest: str) -> Manifest | None:
    """The manifest stored under `digest`, or None when the registry has none; refuses a body of another digest."""
    if not is_digest(digest):
        raise ValueError(f"not a digest: {digest!r}")
    response = session.request("GET", f"/v2/{repository}/manifests/{digest}", scope=_scope(repository),
                               headers={"Accept": ACCEPT})
    if response.status_code == 404:
        return None
    what = f"reading the manifest {repository}@{digest}"
    _raise_unless_ok(session, response, what)
    algorithm, _, encoded = digest.partition(":")
    actual = hashlib.new(algorithm, response.content).hexdigest()
    if actual != encoded:
        raise RegistryError(f"{what}: {session.url} answered with a manifest whose digest is {algorithm}:{actual}; "
                            "refused, nothing is deleted on its word")
    body = _json_object(session, response.content, f"the manifest {repository}@{digest}")
    media_type = _media_type(body, response)
    subject = body.get("subject")
    subject = subject.get("digest") if isinstance(subject, dict) else ""
    subject = subject if is_digest(subject) else ""
    if media_type not in INDEX_TYPES:
        return Manifest(digest, media_type, subject=subject, cosign=_cosign_kinds(body))
    what = f"the manifest {repository}@{digest}"
    children, nested, bad = _descriptors(session, body.get("manifests"), what)
    _warn_left_out(what, bad)
    return Manifest(digest, media_type, tuple(children), subject, tuple(nested))


def _media_type(body: dict, response: requests.Response) -> str:
    """The body's `mediaType`; without one, an index only when the body lists `manifests` (whatever the
    Content-Type says: the header is not what was hashed), else what the header says, unless it says index."""
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = response.headers.get("Content-Type", "").split(";")[0].strip()
    if isinstance(body.get("manifests"), list):
        return header if header in INDEX_TYPES else OCI_INDEX
    return "" if header in INDEX_TYPES else header


def index_children(session: RegistrySession, repository: str, digest: str) -> list[str]:
    """The child manifests of an image index or manifest list; empty for any other manifest or none."""
    manifest = manifest_read(session, repository, digest)
    return list(manifest.children) if manifest is not None and manifest.is_index else []


# --- Referrers -----------------------------------------------------------------------------------

@dataclass
class ReferrerLookup:
    """The referrers of one subject: those taken (digest → how found) and those listed but refused (→ why)."""

    subject: str
    api: bool = False  # the registry answered the referrers API
    accepted: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def referrers_api(session: RegistrySession, repository: str, digest: str) -> list[str] | None:
    """The digests the referrers API lists for `digest`, every page; None when the registry has no such API: a
    registry that has it answers 200 with an image index (never 404); any other first answer (404, 400, a 401
    or 403 of a proxy that knows no such path) is taken as none, and the referrers tag schema is read instead.
    More than MAX_READS listed, or MAX_PAGES pages, is refused as soon as it shows: RegistryError."""
    what = f"the referrers of {repository}@{digest}"
    left_out: list = []
    try:
        return _referrers_pages(session, repository, digest, left_out)
    finally:
        _warn_left_out(what, left_out)  # one warning for the whole listing


def _referrers_pages(session: RegistrySession, repository: str, digest: str, left_out: list) -> list[str] | None:
    base = f"/v2/{repository}/referrers/{digest}"
    path, seen, found = base, set(), {}
    for page in range(MAX_PAGES):
        what = f"listing the referrers of {repository}@{digest}: page {page + 1}"
        response = session.request("GET", path, scope=_scope(repository), headers={"Accept": OCI_INDEX})
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if response.status_code != 200 or content_type != OCI_INDEX:
            if page == 0:
                return None
            raise RegistryError(f"{what} answered {error_text(response, quote=False)} "
                                f"({content_type or 'no content type'})")
        body = _json_object(session, response.content, f"the referrers of {repository}@{digest}")
        if not isinstance(body.get("manifests"), list):
            if page == 0:
                return None
            raise RegistryError(f"{what} is not an index")
        listed, _, bad = _descriptors(session, body["manifests"], what)
        found.update(dict.fromkeys(listed))
        left_out.extend(bad)
        if len(found) > MAX_READS:
            raise RegistryError(f"{what}: more than {MAX_READS} referrers listed; nothing is deleted on a partial "
                                "reading")
        seen.add(path)
        path = _next_page(response, base)
        if not path or path in seen:
            return list(found)
    raise RegistryError(f"listing the referrers of {repository}@{digest}: more than {MAX_PAGES} pages")


def _next_page(response: requests.Response, base: str) -> str:
    """The next page's path and query, asked of the registry itself whatever host the link names, and only
    under the same referrers path."""
    match = _NEXT.search(response.headers.get("Link", ""))
    if not match:
        return ""
    parts = urlsplit(match.group(1))
    path = parts.path or base  # a link may be the query alone
    if path != base:
        raise RegistryError(f"the referrers API's next page is not under {base}: {parts.path[:200]!r}; refused")
    return path + (f"?{parts.query}" if parts.query else "")


def _tag_digest(session: RegistrySession, repository: str, tag: str, tags: dict[str, str] | None) -> str:
    digest = tags.get(tag, "") if tags is not None else session.manifest_digest(repository, tag) or ""
    return digest if is_digest(digest) else ""


def referrers_find(session: RegistrySession, repository: str, digest: str, *, tags: dict[str, str] | None = None,
                   read=None, ask_api: bool = True) -> ReferrerLookup:
    """The referrers of `digest`: the referrers API's and the `sha256-<hex>` tag index's, each taken only when its
    own manifest's subject is `digest`; and cosign's tags' manifests, taken when they name no other subject.

    `tags` (tag → digest, as just read) saves asking for each tag; `read(digest)` reads a manifest (a cache);
    `ask_api=False`: the registry already showed it has no referrers API (the tags are read alone).
    """
    read = read or (lambda d: manifest_read(session, repository, d))
    lookup = ReferrerLookup(digest)
    listed: dict[str, str] = {}
    api = referrers_api(session, repository, digest) if ask_api else None
    if api is not None:
        lookup.api = True
        listed.update((d, "the referrers API") for d in api)
    tag = referrers_tag(digest)
    tag_index = _tag_digest(session, repository, tag, tags)
    if tag_index:
        index = read(tag_index)
        if index is not None and index.is_index:
            for child in index.children:
                listed.setdefault(child, f"tag {tag}")
        elif index is not None:
            lookup.refused[tag_index] = f"tag {tag} points to a {index.media_type or 'manifest'}, not an index"
    if len(listed) > MAX_READS:
        raise RegistryError(f"{session.url}/{repository}: more than {MAX_READS} referrers of {digest} are listed; "
                            "nothing is deleted on a partial reading")
    for candidate, how in listed.items():
        manifest = read(candidate)
        if manifest is None:
            continue  # listed, but gone
        if manifest.subject == digest:
            lookup.accepted[candidate] = how
        else:
            lookup.refused[candidate] = (f"listed by {how}, but its manifest names "
                                         f"{'the subject ' + manifest.subject if manifest.subject else 'no subject'}")
    for tag in cosign_tags(digest):
        candidate = _tag_digest(session, repository, tag, tags)
        manifest = read(candidate) if candidate else None
        if manifest is None:
            continue
        why = _cosign_refusal(manifest, digest, tag)
        if why:
            lookup.refused[candidate] = f"tag {tag}: {why}"
        else:
            lookup.accepted.setdefault(candidate, f"tag {tag}")
    if lookup.refused:
        first, why = next(iter(lookup.refused.items()))
        log.warning("%d manifest(s) not taken as referrers of %s@%s, the first: %s: %s",
                    len(lookup.refused), repository, digest, first, why)
    return lookup


def _cosign_refusal(manifest: Manifest, digest: str, tag: str) -> str:
    if manifest.digest == digest:
        return "it is the subject itself"
    if manifest.subject and manifest.subject != digest:
        return f"its manifest names the subject {manifest.subject}"
    if manifest.is_index:
        return "cosign writes image manifests there, this is an index"
    suffix = tag[tag.rindex("."):]
    if suffix not in manifest.cosign:
        return (f"it does not look like cosign's {suffix} artifact (its layers are not of cosign's media types, "
                f"and carry no {COSIGN_SIGNATURE_ANNOTATION} annotation)")
    return ""


def referrers(session: RegistrySession, repository: str, digest: str, *, tags: dict[str, str] | None = None
              ) -> list[str]:
    """The digests of the manifests whose subject is `digest` (see referrers_find), in the order found."""
    return list(referrers_find(session, repository, digest, tags=tags).accepted)


# --- The graph clean-up plans on ---------------------------------------------------------------

@dataclass
class RelatedGraph:
    """What holds what in one repository, as read just now (builds/cleanup/related.py plans on it)."""

    children: dict[str, list[str]] = field(default_factory=dict)  # every index read → its child manifests
    referrers: dict[str, list[str]] = field(default_factory=dict)  # subject → its referrers (cosign's tagged too)
    tags: dict[str, str] = field(default_factory=dict)  # tag → digest
    refused: dict[str, str] = field(default_factory=dict)  # listed as a referrer but not taken → why


class _Reader:
    """Reads each manifest once, `concurrency` at a time, at most MAX_READS in all."""

    def __init__(self, session: RegistrySession, repository: str, concurrency: int):
        self.session, self.repository, self.concurrency = session, repository, concurrency
        self.manifests: dict[str, Manifest | None] = {}

    def read(self, digest: str) -> Manifest | None:
        if digest not in self.manifests:
            self.read_all([digest])
        return self.manifests[digest]

    def read_all(self, digests: Iterable[str]) -> None:
        todo = sorted({d for d in digests if d not in self.manifests})
        if len(self.manifests) + len(todo) > MAX_READS:
            raise RegistryError(f"{self.session.url}/{self.repository}: more than {MAX_READS} manifests are related "
                                "to what is to be deleted; not deleted")
        if len(todo) > 1 and self.concurrency > 1:
            with ThreadPoolExecutor(min(self.concurrency, len(todo))) as pool:
                results = list(pool.map(lambda d: manifest_read(self.session, self.repository, d), todo))
        else:
            results = [manifest_read(self.session, self.repository, d) for d in todo]
        self.manifests.update(zip(todo, results))

    def with_children(self, digests: Iterable[str], *, every_child: bool = True) -> None:
        """Reads `digests`, then the children of the indexes among them, and so on down.

        `every_child=False`: only the children an index's descriptors call indexes (or do not type) — what can
        hold further children; the others are plain manifests, not worth a request each."""
        todo = set(digests)
        while todo:
            self.read_all(todo)
            todo = {c for d in todo if (m := self.manifests[d]) is not None
                    for c in (m.children if every_child else m.nested)} - set(self.manifests)


def repository_graph(session: RegistrySession, repository: str, *, wanted: Iterable[str], kept: Iterable[str] = (),
                     tags: dict[str, str], depth: int = REFERRER_DEPTH, concurrency: int = 8) -> RelatedGraph:
    """Reads what planning the deletion of `wanted` needs: the children of every index that a tag, `kept` or
    `wanted` names (all of them: an index left standing protects its children), the subject of every manifest
    read, and the referrers of whatever may be deleted with `wanted`, `depth` referrers deep.

    `tags` is the repository's tag → digest, as read just before. Raises RegistryError when a manifest cannot be
    read: a partial graph could miss an index that holds what would be deleted.
    """
    wanted = sorted({d for d in wanted if is_digest(d)})
    tags = {t: d for t, d in tags.items() if is_digest(d)}
    reader = _Reader(session, repository, concurrency)
    reader.with_children([*tags.values(), *(d for d in kept if is_digest(d))], every_child=False)
    reader.with_children(wanted)  # all of what may go with them: their subjects and referrers decide
    graph = RelatedGraph(tags=dict(tags))
    added: set[tuple[str, str]] = set()  # (subject, referrer) in graph.referrers
    frontier, looked_up = _with_descendants(reader, wanted), set()
    ask_api = True  # until the registry shows it has no referrers API: one request, not one per digest
    for _ in range(depth):
        found = []
        for digest in sorted(frontier - looked_up):
            looked_up.add(digest)
            lookup = referrers_find(session, repository, digest, tags=tags, read=reader.read, ask_api=ask_api)
            ask_api = lookup.api
            graph.refused.update(lookup.refused)
            found.extend(lookup.accepted)
            for referrer in lookup.accepted:
                _add(graph.referrers, added, digest, referrer)
        reader.with_children(found)
        frontier = _with_descendants(reader, found)
    for digest, manifest in reader.manifests.items():
        if manifest is None:
            continue
        if manifest.is_index:
            graph.children[digest] = list(manifest.children)
        if manifest.subject:
            _add(graph.referrers, added, manifest.subject, digest)
    return graph


def _with_descendants(reader: _Reader, digests: Iterable[str]) -> set[str]:
    found, todo = set(), list(digests)
    while todo:
        digest = todo.pop()
        if digest in found:
            continue
        found.add(digest)
        manifest = reader.manifests.get(digest)
        todo.extend(manifest.children if manifest is not None else ())
    return found


def _add(mapping: dict[str, list[str]], added: set[tuple[str, str]], key: str, value: str) -> None:
    if (key, value) not in added:
        added.add((key, value))
        mapping.setdefault(key, []).append(value)
