"""The Docker Registry HTTP API v2 (OCI distribution) through requests: its HTTP client, RegistrySession.

v2_registry.V2Registry, the session `open_registry` gives for every registry but ECR, works on one.

A RegistrySession holds one registry, one set of credentials, one pool of HTTP connections and
the registry's auth: Basic, or Bearer tokens from the realm named in
`WWW-Authenticate: Bearer realm="...",service="...",scope="..."`, fetched for the scope the
registry asks for and reused while they are valid (about 60 s). It is safe to share between
threads of one clean-up run.

What a registry answers is not trusted (it may be anyone's host, or lie): credentials go only to
the registry's own host name (any port) or to a token service over https; redirects are followed
without credentials; link-local and cloud-metadata addresses are refused even when a host name
resolves to one; an answer is quoted in errors only when it comes from the registry's own host,
and then cut short.
"""

import hashlib
import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

from agent.references import is_docker_hub
from connections.validators import forbidden_address, forbidden_address_message

from .base import (
    MANIFEST_TYPES,
    ForbiddenDestination,
    RefusedByRegistry,
    RegistryError,
    TransientRegistryError,
    is_digest,
    is_repository_name,
    is_tag,
)

TIMEOUT = (10, 30)
MAX_REDIRECTS = 5
QUOTE_LIMIT = 300  # characters of a registry's answer quoted in an error
BODY_LIMIT = 8 * 1024 * 1024  # a registry's answer larger than this is refused, not read
MAX_TAG_PAGES = 1_000  # pages of a repository's tag list followed (a million tags at 1,000 a page)
DOCKER_HUB_API = "https://registry-1.docker.io"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class _GuardedConnectionMixin:
    """Checks the address actually connected to, so a host name resolving to a metadata address is refused."""

    def _new_conn(self):
        sock = super()._new_conn()
        peer = sock.getpeername()[0]
        if forbidden_address(peer):
            sock.close()
            raise ForbiddenDestination(forbidden_address_message(f"{self.host} ({peer})", "a registry destination"))
        return sock


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


@dataclass
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict


def base_url(address: str) -> str:
    """https://host[:port] for an address, or the scheme an explicit URL gives."""
    if "://" in address:
        parts = urlsplit(address)
        return f"{parts.scheme}://{parts.netloc}"
    if is_docker_hub(address):  # any of Docker Hub's names (agent/references.py)
        return DOCKER_HUB_API
    return f"https://{address}"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_challenge(header: str) -> Challenge | None:
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    return Challenge(scheme=scheme.lower(), params=dict(_CHALLENGE_PARAM.findall(rest)))


def error_text(response: requests.Response, *, quote: bool = True) -> str:
    """The registry's own words: the `errors` of its JSON body, else the start of its body, cut short.

    `quote=False` (an answer from another host than the registry's) gives the status only: the
    text of an arbitrary host must not be read back through the connection test.
    """
    text = ""
    if quote:
        try:
            errors = response.json().get("errors") or []
            text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                             for e in errors if isinstance(e, dict))
        except (ValueError, AttributeError, TypeError):
            text = response.text[:QUOTE_LIMIT]
        text = " ".join(text.split())
        if len(text) > QUOTE_LIMIT:
            text = text[:QUOTE_LIMIT] + "…"
    return f"HTTP {response.status_code}" + (f" {text}" if text else "")


def _reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"\] ([^'\"]+)", text)
    return match.group(1).strip(" ')") if match else text[:200]


class RegistrySession:
    def __init__(self, address: str, username: str = "", password: str = "", pool_size: int = 10):
        self.url = base_url(address)
        self.host = urlsplit(self.url).hostname or ""
        if forbidden_address(self.host):
            raise ForbiddenDestination(forbidden_address_message(address, "a registry address"))
        self.username, self.password = username, password
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "dockersupport"
        self.http.max_redirects = MAX_REDIRECTS
        adapter = _GuardedAdapter(pool_connections=2, pool_maxsize=pool_size)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self._challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (token, valid until)
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    def close(self):
        self.http.close()

    # Transport -----------------------------------------------------------------------------------
    def _send(self, method, url, **kwargs):
        try:
            response = self._send_once(method, url, **kwargs)
        except requests.exceptions.ConnectionError:  # TLS errors included
            # Docker allows plain HTTP to registries on loopback addresses; so do we.
            if not (url.startswith("https://") and _is_loopback(url)):
                raise
            with self._lock:  # threads that fail at once switch once
                if self.url.startswith("https://"):
                    self.url = "http://" + self.url.removeprefix("https://")
            url = "http://" + url.removeprefix("https://")
            response = self._send_once(method, url, **kwargs)
        return self._follow_redirects(method, response, kwargs)

    def _send_once(self, method, url, **kwargs):
        response = self.http.request(method, url, timeout=TIMEOUT, allow_redirects=False, stream=True, **kwargs)
        _read_body(response)
        return response

    def _follow_redirects(self, method, response, kwargs):
        """Reads go where a registry redirects them (a CDN, say), but never with credentials."""
        hops = 0
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items() if k.lower() != "authorization"}
        while response.is_redirect and method in ("GET", "HEAD"):
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RegistryError(f"{self.url}: more than {MAX_REDIRECTS} redirects")
            target = urljoin(response.url, response.headers["Location"])
            if urlsplit(target).scheme not in ("http", "https"):
                raise RegistryError(f"{self.url} redirected to a URL that is not http(s)")
            response = self._send_once(method, target, headers=headers, **kwargs)
        return response

    def _from_registry(self, response: requests.Response) -> bool:
        return (urlsplit(response.url).hostname or "") == self.host

    def _error_text(self, response: requests.Response) -> str:
        return error_text(response, quote=self._from_registry(response))

    def request(self, method: str, path: str, scope: str | None = None, **kwargs) -> requests.Response:
        """An authenticated request; raises TransientRegistryError when unreachable, 5xx or 429."""
        _path_check(path)
        extra = kwargs.pop("headers", None) or {}
        try:
            response = self._send(method, self.url + path, headers=self._auth_headers(scope, extra), **kwargs)
            if response.status_code == 401:
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                if challenge is not None:
                    with self._lock:
                        self._challenge = challenge
                        self._tokens.pop(challenge.params.get("scope") or scope or "", None)
                    wanted = challenge.params.get("scope") or scope
                    response = self._send(method, self.url + path, headers=self._auth_headers(wanted, extra),
                                          **kwargs)
        except requests.exceptions.RequestException as exc:
            raise TransientRegistryError(f"registry {self.url} cannot be reached: {_reason(exc)}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientRegistryError(f"{method} {self.url}{path}: {self._error_text(response)}")
        return response

    def _auth_headers(self, scope, extra: dict) -> dict:
        headers = dict(extra)
        challenge = self._challenge
        if challenge is None or not self.username:
            return headers
        if challenge.scheme == "bearer":
            headers["Authorization"] = f"Bearer {self._token(challenge, scope)}"
        else:
            auth = requests.auth._basic_auth_str(self.username, self.password)
            headers["Authorization"] = auth
        return headers

    def _token(self, challenge: Challenge, scope: str | None) -> str:
        key = scope or ""
        with self._lock:
            token, until = self._tokens.get(key, ("", 0.0))
        if token and until > time.monotonic():
            return token
        with self._fetch_lock:  # threads that need the same new token wait for one fetch
            with self._lock:
                token, until = self._tokens.get(key, ("", 0.0))
            if token and until > time.monotonic():
                return token
            return self._fetch_token(challenge, scope, key)

    def _checked_realm(self, realm: str) -> str:
        """The realm URL as requests will send it, if credentials may go there: to a token service
        over https, or to the registry's own host name.

        The check reads the URL that requests prepares, the very one then fetched: parsers disagree
        on odd URLs (a backslash before an `@`), and a realm is whatever the registry says.
        """
        if any(c.isspace() or c == "\\" or ord(c) < 32 for c in realm):
            raise RegistryError(f"{self.url} names a token service whose URL holds spaces, control characters "
                                "or backslashes")
        try:
            prepared = requests.Request("GET", realm).prepare().url
        except requests.exceptions.RequestException:
            raise RegistryError(f"{self.url} names a token service that is not an http(s) URL") from None
        parts = urlsplit(prepared)
        host = parts.hostname or ""
        if (parse_url(prepared).host or "").strip("[]").lower() != host:  # urllib3, which connects, must agree
            raise RegistryError(f"{self.url} names a token service whose URL is ambiguous")
        if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
            raise RegistryError(f"{self.url} names a token service that is not a plain http(s) URL")
        if forbidden_address(host):
            raise ForbiddenDestination(forbidden_address_message(_cut(realm), "a token service"))
        if parts.scheme != "https" and host != self.host:
            raise RegistryError(
                f"{self.url} names the token service {_cut(parts.scheme + '://' + parts.netloc)} on another host "
                "over plain http; credentials are sent to another host only over https"
            )
        return prepared

    def _fetch_token(self, challenge: Challenge, scope: str | None, key: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.url} asked for a bearer token without naming its realm")
        realm = self._checked_realm(realm)
        params = {"service": challenge.params.get("service", "")}
        if scope:
            params["scope"] = scope
        try:
            response = self._send_once("GET", realm, params=params, auth=(self.username, self.password))
        except requests.exceptions.RequestException as exc:
            raise TransientRegistryError(f"token service {_cut(realm)} cannot be reached: {_reason(exc)}") from None
        if response.status_code != 200:
            raise RegistryError(f"token service {_cut(realm)} refused the credentials: {self._error_text(response)}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token") or ""
            lifetime = int(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token service {_cut(realm)} answered without a token") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {_cut(realm)} answered without a token")
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 5))
        return token

    # Operations ----------------------------------------------------------------------------------
    def check_login(self) -> list[str]:
        """Reaches /v2/ and has the credentials accepted; returns what was verified, for people."""
        try:
            response = self._send("GET", f"{self.url}/v2/")
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"registry {self.url} cannot be reached: {_reason(exc)}") from None
        verified = [f"registry reached at {self.url}/v2/ (HTTP {response.status_code})"]
        if response.status_code == 200:
            verified.append("the registry asks for no login")
            return verified
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code != 401 or challenge is None:
            raise RegistryError(f"{self.url}/v2/ answered {self._error_text(response)}, not a registry's login "
                                "challenge")
        self._challenge = challenge
        if challenge.scheme == "bearer":
            self._token(challenge, None)
            verified.append(f"token service {_cut(challenge.params.get('realm', ''))} accepted the credentials")
        response = self._send("GET", f"{self.url}/v2/", headers=self._auth_headers(None, {}))
        if response.status_code != 200:
            raise RegistryError(f"credentials refused by {self.url}: {self._error_text(response)}")
        verified.append(f"credentials of '{self.username}' accepted")
        return verified

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag (or digest) resolves to, as pushed: lists and indexes stay whole. None if absent.

        Docker-Content-Digest is optional (the distribution spec tells clients not to rely on it): without a
        well-formed one, the manifest is read and hashed. An unknown digest is never taken for "no such tag"."""
        path = f"/v2/{_name(repository)}/manifests/{_reference(reference)}"
        response = self.request("HEAD", path, scope=_scope(repository, "pull"), headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"HEAD {repository}:{reference}")
        digest = response.headers.get("Docker-Content-Digest", "").strip()
        if is_digest(digest):
            return digest
        response = self.request("GET", path, scope=_scope(repository, "pull"), headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._raise_for_status(response, f"GET {repository}:{reference}")
        if not response.content:
            raise RegistryError(f"{repository}:{reference}: the registry gave neither a digest nor a manifest")
        return "sha256:" + hashlib.sha256(response.content).hexdigest()

    def tags(self, repository: str) -> list[str]:
        """Every tag of the repository, page by page (Link: rel="next"), each page asked once, the pages kept
        under this repository's tag list and at most MAX_TAG_PAGES of them: a registry cannot keep us listing."""
        first = f"/v2/{_name(repository)}/tags/list"
        tags, path, seen = [], f"{first}?n=1000", set()
        while path:
            if path in seen or len(seen) >= MAX_TAG_PAGES:
                raise RegistryError(f"listing the tags of {repository}: the registry's pages do not end "
                                    f"({len(seen)} pages read)")
            seen.add(path)
            response = self.request("GET", path, scope=_scope(repository, "pull"))
            if response.status_code == 404:
                return tags
            self._raise_for_status(response, f"listing the tags of {repository}")
            try:
                tags.extend(tag for tag in response.json().get("tags") or [] if isinstance(tag, str))
            except (ValueError, AttributeError, TypeError):
                raise RegistryError(f"listing the tags of {repository}: the registry's answer is not a tag list") \
                    from None
            link = response.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            # The next page is always asked of the registry itself, whatever host the link names, and only
            # under this repository's tag list.
            path = _path_and_query(match.group(1)) if match else ""
            if path and urlsplit(path).path != first:
                raise RegistryError(f"listing the tags of {repository}: the next page's link leads elsewhere "
                                    f"({_cut(path)})")
        return list(dict.fromkeys(tag for tag in tags if is_tag(tag)))

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE by digest (every tag on it goes with it). True if deleted, False if already gone."""
        if not is_digest(digest):
            raise RegistryError(f"not deleting {repository}@{_cut(digest)}: a manifest is deleted by its digest only")
        response = self.request("DELETE", f"/v2/{_name(repository)}/manifests/{digest}",
                                scope=_scope(repository, "delete"))
        if response.status_code in (200, 202):
            return True
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise RefusedByRegistry(
                f"{self.url} refuses to delete manifests (HTTP 405 UNSUPPORTED): deletion is disabled on this "
                "registry; enable it with storage.delete.enabled: true in the registry's configuration"
            )
        self._raise_for_status(response, f"deleting {repository}@{digest}")
        return True

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        """Anything but a 2xx is an error: a redirect left unfollowed (DELETE) is not a success."""
        if response.status_code in (401, 403):
            raise RefusedByRegistry(f"{what}: the registry refused the credentials: {self._error_text(response)}")
        if not 200 <= response.status_code < 300:
            raise RegistryError(f"{what}: {self._error_text(response)}")


def _cut(text: str) -> str:
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT] + "…"


def _scope(repository: str, action: str) -> str:
    return f"repository:{repository}:{action}" if action == "pull" else f"repository:{repository}:pull,{action}"


def _name(repository: str) -> str:
    if not is_repository_name(repository):
        raise RegistryError(f"'{_cut(repository)}' is not a repository name: nothing is asked about it")
    return repository


def _reference(reference: str) -> str:
    if not (is_tag(reference) or is_digest(reference)):
        raise RegistryError(f"'{_cut(reference)}' is neither a tag nor a digest: nothing is asked about it")
    return reference


def _path_check(path: str) -> None:
    """No request leaves with a path that a server would read as another one: dot segments (plain or
    percent-encoded), backslashes, or encoded slashes."""
    route = urlsplit(path).path
    lowered = route.lower()
    if any(segment in (".", "..") for segment in route.split("/")) or "%2e" in lowered or "%2f" in lowered \
            or "%5c" in lowered or "\\" in route:
        raise RegistryError(f"refusing to send a request for '{_cut(route)}': its path is not plain")


def _path_and_query(link: str) -> str:
    parts = urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _read_body(response: requests.Response) -> None:
    """Reads the answer into memory up to BODY_LIMIT: a registry cannot make the server hold gigabytes."""
    try:
        data = response.raw.read(BODY_LIMIT + 1, decode_content=True)
    except Exception as exc:  # noqa: BLE001 - urllib3 raises several kinds; all mean the answer broke off
        response.close()
        raise requests.exceptions.ChunkedEncodingError(f"the answer broke off: {exc}") from None
    response.close()
    if len(data) > BODY_LIMIT:
        raise RegistryError(f"{response.url} answered with more than {BODY_LIMIT // (1024 * 1024)} MiB; not read")
    response._content = data  # what requests itself sets when it reads a body
