"""The Docker Registry HTTP API v2 (OCI distribution), through requests.

Handles the registry's auth challenge: Basic, or Bearer tokens from the realm named in
`WWW-Authenticate: Bearer realm="...",service="...",scope="..."`.
"""

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from .credentials import RegistryError

TIMEOUT = (10, 30)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
DOCKER_HUB_API = "https://registry-1.docker.io"


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


def _error_text(response: requests.Response) -> str:
    """The registry's own words: the `errors` of its JSON body, else the start of its body."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = response.text[:200].strip()
    return f"HTTP {response.status_code}" + (f" {text}" if text else "")


class RegistrySession:
    """One registry, one set of credentials; keeps the HTTP connection and bearer tokens."""

    def __init__(self, address: str, username: str = "", password: str = ""):
        self.url = base_url(address)
        self.username, self.password = username, password
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "dockersupport"

    def close(self):
        self.http.close()

    def _get(self, url, **kwargs):
        try:
            return self.http.get(url, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.ConnectionError:  # TLS errors included
            # Docker allows plain HTTP to registries on loopback addresses; so do we.
            if not (url.startswith("https://") and _is_loopback(url)):
                raise
            self.url = "http://" + self.url.removeprefix("https://")
            return self.http.get("http://" + url.removeprefix("https://"), timeout=TIMEOUT, **kwargs)

    def check_login(self) -> list[str]:
        """Reaches /v2/ and has the credentials accepted; returns what was verified, for people."""
        verified = []
        try:
            response = self._get(f"{self.url}/v2/")
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"registry {self.url} cannot be reached: {_reason(exc)}") from None
        verified.append(f"registry reached at {self.url}/v2/ (HTTP {response.status_code})")
        if response.status_code == 200:
            verified.append("the registry asks for no login")
            return verified
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if response.status_code != 401 or challenge is None:
            raise RegistryError(f"{self.url}/v2/ answered {_error_text(response)}, not a registry's login challenge")
        if challenge.scheme == "bearer":
            token = self._bearer_token(challenge, scope=None)
            verified.append(f"token service {challenge.params.get('realm')} accepted the credentials")
            response = self._get(f"{self.url}/v2/", headers={"Authorization": f"Bearer {token}"})
        else:
            response = self._get(f"{self.url}/v2/", auth=(self.username, self.password))
        if response.status_code != 200:
            raise RegistryError(f"credentials refused by {self.url}: {_error_text(response)}")
        verified.append(f"credentials of '{self.username}' accepted")
        return verified

    def _bearer_token(self, challenge: Challenge, scope: str | None) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.url} asked for a bearer token without naming its realm")
        params = {"service": challenge.params.get("service", "")}
        if scope:
            params["scope"] = scope
        auth = (self.username, self.password) if self.username else None
        try:
            response = self.http.get(realm, params=params, auth=auth, timeout=TIMEOUT)
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"token service {realm} cannot be reached: {_reason(exc)}") from None
        if response.status_code != 200:
            raise RegistryError(f"token service {realm} refused the credentials: {_error_text(response)}")
        body = response.json()
        return body.get("token") or body.get("access_token") or ""


def _reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"\] ([^'\"]+)", text) or re.search(r"Errno -?\d+\] ([^'\"]+)", text)
    return match.group(1).strip(" ')") if match else text[:200]
