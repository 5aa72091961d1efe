"""Docker Hub's API (hub.docker.com) for the tests, which have no Docker Hub: exactly the requests dockersupport sends,
answered as Docker documents them (docs.docker.com/reference/api/hub) and Docker's hub-tool reads them:

- `POST /v2/auth/token` `{"identifier", "secret"}` (JSON) → 200 `{"access_token": JWT}`; 401 `{"detail": ...}`;
- `GET /v2/namespaces/{namespace}/repositories/{repository}/tags?page_size=N&page=P` (N at most 100) → 200
  `{"count", "next": URL | null, "previous", "results": [{"name", "digest", "tag_status", ...}]}`; 404 unknown;
- `GET /v2/namespaces/{namespace}/repositories/{repository}/tags/{tag}` → 200 `{"name", "digest", ...}`; 404;
- `DELETE /v2/repositories/{namespace}/{repository}/tags/{tag}/` → 204; 404 unknown tag; 403 when the token's
  personal access token lacks the delete scope.

Every request but the login must carry `Authorization: Bearer <a token it gave>`, else 401. A repository the account
cannot see (a private one) is answered as one that does not exist (404). Tokens expire when
`.expire_tokens()` is called (Docker Hub's live 10 minutes).
"""

import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

from .stand_in import Answer, ScriptedService, StandIn

_TAGS = re.compile(r"^/v2/namespaces/(?P<ns>[^/]+)/repositories/(?P<repo>[^/]+)/tags(?:/(?P<tag>[^/]+))?$")
_DELETE = re.compile(r"^/v2/repositories/(?P<ns>[^/]+)/(?P<repo>[^/]+)/tags/(?P<tag>[^/]+)/$")
SCOPES = ("repo:read", "repo:write", "repo:admin")  # Read; Read, Write; Read, Write, Delete


def _json(status: int, body, headers=None) -> Answer:
    return Answer(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode())


class DockerHubApi(ScriptedService):
    """`DockerHubApi(accounts={username: {secret: scope}})`, started with `with`, on `host`.

    `.push(repository, digest, *tags)` points tags at a digest; `.tags[repository]` is tag → digest; `.deleted` the
    (repository, tag) deleted in order; `.answers[(method, path prefix)]` an Answer given instead (429, 503 ...);
    `.next_base` the scheme and host its `next` links name (a hostile one, for the tests); `.unseen[username]` the
    repositories that account cannot see."""

    def __init__(self, *, accounts: dict[str, dict[str, str]], host: str = "127.0.0.7"):
        self.accounts = accounts
        self.tags: dict[str, dict[str, str]] = {}
        self.deleted: list[tuple[str, str]] = []
        self.answers: dict[tuple[str, str], Answer] = {}
        self.logins: list[str] = []
        self._tokens: dict[str, tuple[str, str]] = {}  # token → (username, scope)
        self.next_base = ""
        self.unseen: dict[str, set[str]] = {}
        self.stand_in = StandIn(host, self._answer)

    def push(self, repository: str, digest: str, *tags: str) -> str:
        self.tags.setdefault(repository, {}).update(dict.fromkeys(tags, digest))
        return digest

    def expire_tokens(self) -> None:
        self._tokens.clear()

    # --- the wire ---------------------------------------------------------------------------------

    def _answer(self, recorded) -> Answer:
        parts = urlsplit(recorded.path)
        for (method, prefix), answer in self.answers.items():
            if recorded.method == method and parts.path.startswith(prefix):
                return answer
        if parts.path == "/v2/auth/token" and recorded.method == "POST":
            return self._login(recorded)
        authorization = recorded.headers.get("Authorization", "")
        who = self._tokens.get(authorization.removeprefix("Bearer ")) if authorization.startswith("Bearer ") else None
        if who is None:
            return _json(401, {"detail": "Authentication credentials were not provided."})
        match = _TAGS.match(parts.path)
        if match and recorded.method == "GET":
            repository = f"{match['ns']}/{match['repo']}"
            if repository not in self.tags or repository in self.unseen.get(who[0], ()):
                return _json(404, {"message": "httperror 404: object not found", "errinfo": {}})
            if match["tag"]:
                digest = self.tags[repository].get(match["tag"])
                if digest is None:
                    return _json(404, {"message": "httperror 404: tag not found", "errinfo": {}})
                return _json(200, self._tag(match["tag"], digest))
            return self._page(repository, parts, recorded)
        match = _DELETE.match(parts.path)
        if match and recorded.method == "DELETE":
            if who[1] != "repo:admin":
                return _json(403, {"detail": "access to the resource is forbidden with this token's scope"})
            repository = f"{match['ns']}/{match['repo']}"
            if match["tag"] not in self.tags.get(repository, {}) or repository in self.unseen.get(who[0], ()):
                return _json(404, {"message": "httperror 404: tag not found", "errinfo": {}})
            del self.tags[repository][match["tag"]]
            self.deleted.append((repository, match["tag"]))
            return Answer(204)
        return _json(404, {"message": "page not found"})

    def _login(self, recorded) -> Answer:
        try:
            body = json.loads(recorded.body)
            username, secret = body["identifier"], body["secret"]
        except (ValueError, KeyError, TypeError):
            return _json(400, {"detail": "identifier and secret are required"})
        scope = self.accounts.get(username, {}).get(secret)
        self.logins.append(username)
        if scope is None:
            return _json(401, {"detail": "Incorrect authentication credentials"})
        token = "hub-jwt-" + secrets.token_hex(12)
        self._tokens[token] = (username, scope)
        return _json(200, {"access_token": token})

    @staticmethod
    def _tag(name: str, digest: str) -> dict:
        return {"id": abs(hash(name)) % 10**8, "name": name, "digest": digest, "tag_status": "active",
                "v2": True, "images": [{"architecture": "amd64", "os": "linux", "digest": digest}]}

    def _page(self, repository: str, parts, recorded) -> Answer:
        query = parse_qs(parts.query)
        size = min(int(query.get("page_size", ["10"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        names = sorted(self.tags[repository])
        chunk = names[(page - 1) * size:page * size]
        base = self.next_base or f"http://{recorded.headers.get('Host', self.address)}"
        more = page * size < len(names)
        return _json(200, {
            "count": len(names),
            "next": f"{base}{parts.path}?page={page + 1}&page_size={size}" if more else None,
            "previous": f"{base}{parts.path}?page={page - 1}&page_size={size}" if page > 1 else None,
            "results": [self._tag(name, self.tags[repository][name]) for name in chunk],
        })
