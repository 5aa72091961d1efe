"""The HTTP client for a registry's own management API (Docker Hub's hub.docker.com, GitHub's api.github.com): the
registries that refuse manifest DELETE and delete through such an API instead (docker_hub.py, github.py).

An ApiSession talks to one API base URL, named by the registry module (and a setting, for tests), and to no other
host with credentials: every request is built from that base and a path (a listing's next page is asked by its
number, never at the URL the API names); redirects are followed for reads only, and without credentials.
Link-local and cloud-metadata addresses are refused as for registries (v2.py's guarded connections). An answer is
quoted in errors only from the API host, cut short, and with the connection's secrets taken out.
"""

import re
from urllib.parse import urljoin, urlsplit

import requests
from requests.auth import AuthBase

from connections.validators import forbidden_address, forbidden_address_message

from .base import ForbiddenDestination, RefusedByRegistry, RegistryError, TransientRegistryError
from .v2 import MAX_REDIRECTS, QUOTE_LIMIT, TIMEOUT, _GuardedAdapter, _read_body, _reason

MAX_PAGES = 1_000  # pages of one listing followed (100,000 tags or versions at 100 a page)
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)


class ApiSession:
    """`ApiSession("https://hub.docker.com", "Docker Hub's API", secrets=[...])`: requests to that base URL alone.

    `secrets` are taken out of every text this session puts in an error (the API could echo them back)."""

    def __init__(self, base: str, name: str, *, headers: dict | None = None, secrets=(), pool_size: int = 4):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise RegistryError(f"{name}: '{base}' is not a plain http(s) URL")
        if forbidden_address(parts.hostname):
            raise ForbiddenDestination(forbidden_address_message(base, f"{name}'s address"))
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.host, self.name = parts.hostname, name
        self.secrets = [s for s in secrets if s]
        self.http = requests.Session()
        self.http.headers.update({"User-Agent": "dockersupport", **(headers or {})})
        adapter = _GuardedAdapter(pool_connections=1, pool_maxsize=pool_size)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, authorization: str = "", **kwargs) -> requests.Response:
        """`path` (with its query) under the base URL; `authorization` goes to the API host alone.

        Raises TransientRegistryError when the API cannot be reached or answers 5xx or 429; any other answer is
        returned, a redirect left unfollowed for anything but a read."""
        headers = dict(kwargs.pop("headers", None) or {})
        url = self.base + path
        try:
            response = self._send(method, url, headers, _Authorization(authorization), **kwargs)
            hops = 0
            while response.is_redirect and method in ("GET", "HEAD"):
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise RegistryError(f"{self.name}: more than {MAX_REDIRECTS} redirects for {method} {path}")
                target = urljoin(response.url, response.headers["Location"])
                if urlsplit(target).scheme not in ("http", "https"):
                    raise RegistryError(f"{self.name} redirected {method} {path} to a URL that is not http(s)")
                response = self._send(method, target, headers, _Authorization(""), **kwargs)  # never credentials
        except requests.exceptions.RequestException as exc:
            raise TransientRegistryError(self.scrub(f"{self.name} ({self.base}) cannot be reached: "
                                                    f"{_reason(exc)}")) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientRegistryError(f"{self.name}: {method} {path} answered {self.error_text(response)}")
        return response

    def _send(self, method, url, headers, auth, **kwargs):
        response = self.http.request(method, url, headers=headers, auth=auth, timeout=TIMEOUT,
                                     allow_redirects=False, stream=True, **kwargs)
        _read_body(response)
        return response

    def from_api(self, response: requests.Response) -> bool:
        return (urlsplit(response.url).hostname or "") == self.host

    def error_text(self, response: requests.Response) -> str:
        """`HTTP <status>` and, from the API host only, its message (`message`, `detail`, `errinfo`, or the start of
        the body), cut short, without the connection's secrets."""
        text = ""
        if self.from_api(response):
            try:
                body = response.json()
                parts = [body.get(key) for key in ("message", "detail", "error", "errinfo")] \
                    if isinstance(body, dict) else []
                text = "; ".join(str(part) for part in parts if part and not isinstance(part, bool))
            except ValueError:
                text = response.text
            text = " ".join(text.split())
            if len(text) > QUOTE_LIMIT:
                text = text[:QUOTE_LIMIT] + "…"
        return self.scrub(f"HTTP {response.status_code}" + (f" {text}" if text else ""))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def raise_for_status(self, response: requests.Response, what: str) -> None:
        """401/403: RefusedByRegistry; anything else but a 2xx: RegistryError; both quote the API."""
        if response.status_code in (401, 403):
            raise RefusedByRegistry(f"{what}: {self.name} refused the credentials: {self.error_text(response)}")
        if not 200 <= response.status_code < 300:
            raise RegistryError(f"{what}: {self.name} answered {self.error_text(response)}")

    def json(self, response: requests.Response, what: str):
        try:
            return response.json()
        except ValueError:
            raise RegistryError(f"{what}: {self.name}'s answer is not JSON") from None


class _Authorization(AuthBase):
    """The request's Authorization header, exactly (none for ""): given as `auth=`, so that requests never puts
    ~/.netrc's credentials for the host in its place (it does for requests without `auth=`), while the
    environment's proxies still apply."""

    def __init__(self, value: str):
        self.value = value

    def __call__(self, request):
        request.headers.pop("Authorization", None)
        if self.value:
            request.headers["Authorization"] = self.value
        return request


def link_next(response: requests.Response) -> str:
    """The rel="next" URL of a Link header (GitHub's paging), "" when there is none."""
    match = _NEXT.search(response.headers.get("Link", ""))
    return match.group(1) if match else ""
