"""The Docker Registry HTTP API v2 (OCI distribution), through requests.

A RegistrySession holds one registry, one set of credentials, one pool of HTTP connections and
the registry's auth: Basic, or Bearer tokens from the realm named in
`WWW-Authenticate: Bearer realm="...",service="...",scope="..."`, fetched for the scope the
registry asks for and reused while they are valid (about 60 s). It is safe to share between
threads of one clean-up run.
"""

import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .credentials import RegistryError

TIMEOUT = (10, 30)
DOCKER_HUB_API = "https://registry-1.docker.io"
# Without the list types a registry answers with one child manifest's digest, not the pushed one.
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class TransientRegistryError(RegistryError):
    """Worth retrying later: unreachable, 5xx, 429."""


@dataclass
class Challenge:
    scheme: str  # "basic" or "bearer"
    params: dict


def base_url(address: str) -> str:
    """https://host[:port] for an address, or the scheme an explicit URL gives."""
    if "://" in address:
        parts = urlsplit(address)
        return f"{parts.scheme}://{parts.netloc}"
    if address in ("", "docker.io", "index.docker.io"):
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


def error_text(response: requests.Response) -> str:
    """The registry's own words: the `errors` of its JSON body, else the start of its body."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = response.text[:200].strip()
    return f"HTTP {response.status_code}" + (f" {text}" if text else "")


def _reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"\] ([^'\"]+)", text)
    return match.group(1).strip(" ')") if match else text[:200]


class RegistrySession:
    def __init__(self, address: str, username: str = "", password: str = "", pool_size: int = 10):
        self.url = base_url(address)
        self.username, self.password = username, password
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "dockersupport"
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size)
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
            return self.http.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.ConnectionError:  # TLS errors included
            # Docker allows plain HTTP to registries on loopback addresses; so do we.
            if not (url.startswith("https://") and _is_loopback(url)):
                raise
            self.url = "http://" + self.url.removeprefix("https://")
            return self.http.request(method, "http://" + url.removeprefix("https://"), timeout=TIMEOUT, **kwargs)

    def request(self, method: str, path: str, scope: str | None = None, **kwargs) -> requests.Response:
        """An authenticated request; raises TransientRegistryError when unreachable, 5xx or 429."""
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
            raise TransientRegistryError(f"{method} {self.url}{path}: {error_text(response)}")
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

    def _fetch_token(self, challenge: Challenge, scope: str | None, key: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.url} asked for a bearer token without naming its realm")
        params = {"service": challenge.params.get("service", "")}
        if scope:
            params["scope"] = scope
        try:
            response = self.http.get(realm, params=params, auth=(self.username, self.password), timeout=TIMEOUT)
        except requests.exceptions.RequestException as exc:
            raise TransientRegistryError(f"token service {realm} cannot be reached: {_reason(exc)}") from None
        if response.status_code != 200:
            raise RegistryError(f"token service {realm} refused the credentials: {error_text(response)}")
        body = response.json()
        token = body.get("token") or body.get("access_token") or ""
        lifetime = int(body.get("expires_in") or 60)
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
            raise RegistryError(f"{self.url}/v2/ answered {error_text(response)}, not a registry's login challenge")
        self._challenge = challenge
        if challenge.scheme == "bearer":
            self._token(challenge, None)
            verified.append(f"token service {challenge.params.get('realm')} accepted the credentials")
        response = self._send("GET", f"{self.url}/v2/", headers=self._auth_headers(None, {}))
        if response.status_code != 200:
            raise RegistryError(f"credentials refused by {self.url}: {error_text(response)}")
        verified.append(f"credentials of '{self.username}' accepted")
        return verified

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag (or digest) resolves to, as pushed: lists and indexes stay whole. None if absent."""
        response = self.request("HEAD", f"/v2/{repository}/manifests/{reference}", scope=_scope(repository, "pull"),
                                headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        _raise_for_status(response, f"HEAD {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest")

    def tags(self, repository: str) -> list[str]:
        tags, path = [], f"/v2/{repository}/tags/list?n=1000"
        while path:
            response = self.request("GET", path, scope=_scope(repository, "pull"))
            if response.status_code == 404:
                return tags
            _raise_for_status(response, f"listing the tags of {repository}")
            tags.extend(response.json().get("tags") or [])
            link = response.headers.get("Link", "")
            match = re.match(r"<([^>]+)>", link)
            path = match.group(1) if match else ""
        return tags

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """DELETE by digest (every tag on it goes with it). True if deleted, False if already gone."""
        response = self.request("DELETE", f"/v2/{repository}/manifests/{digest}", scope=_scope(repository, "delete"))
        if response.status_code in (200, 202):
            return True
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise RegistryError(
                f"{self.url} refuses to delete manifests (HTTP 405 UNSUPPORTED): deletion is disabled on this "
                "registry; enable it with storage.delete.enabled: true in the registry's configuration"
            )
        _raise_for_status(response, f"deleting {repository}@{digest}")
        return True


def _scope(repository: str, action: str) -> str:
    return f"repository:{repository}:{action}" if action == "pull" else f"repository:{repository}:pull,{action}"


def _raise_for_status(response: requests.Response, what: str) -> None:
    if response.status_code in (401, 403):
        raise RegistryError(f"{what}: the registry refused the credentials: {error_text(response)}")
    if response.status_code >= 400:
        raise RegistryError(f"{what}: {error_text(response)}")
