"""A registry with Bearer-token auth: Debian's docker-registry configured with `auth: token`, and a
small token service of ours (the registry's realm) that checks a username/password and signs JWTs
with a self-signed certificate the registry trusts, as Docker Hub, GitLab or Harbor do."""

import base64
import datetime
import json
import os
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .registry import Registry
from .service import free_port

ISSUER = "dockersupport-test-token-service"
SERVICE = "dockersupport-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """Hands out tokens for the scopes asked for, to the one user it knows; records every request."""

    def __init__(self, username: str, password: str):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.username, self.password = username, password
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self.requests: list[dict] = []  # {"user", "scope", "granted"}
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self):
        self._thread.start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else (scope, "", "")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": ISSUER, "sub": self.username, "aud": SERVICE, "exp": now + 60, "nbf": now - 5,
                  "iat": now, "jti": str(uuid.uuid4()), "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                user = password = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                granted = user == service.username and password == service.password
                service.requests.append({"user": user, "scope": query.get("scope", []), "granted": granted})
                if not granted:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong username or password"}]})
                    return
                self._answer(200, {"token": service.token(query.get("scope", [])), "expires_in": 60})

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        return Handler


class TokenRegistry(Registry):
    """``Registry`` whose clients authenticate with Bearer tokens from ``.tokens`` (a TokenService)."""

    name = "token-registry"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tokens = None

    def _prepare(self):
        super()._prepare()
        self.tokens = TokenService(self.username, self.password)
        self.tokens.start()
        with open(os.path.join(self.root, "token-ca.pem"), "wb") as f:
            f.write(self.tokens.certificate_pem)
        with open(os.path.join(self.root, "config.yml"), "w") as f:
            f.write(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {self.root}/data
  delete:
    enabled: {str(self.delete_enabled).lower()}
http:
  addr: {self.address}
  secret: {secrets.token_hex(16)}
auth:
  token:
    realm: {self.tokens.realm}
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {self.root}/token-ca.pem
""")

    def stop(self, keep_data=False):
        result = super().stop(keep_data)
        if not keep_data and self.tokens is not None:
            self.tokens.stop()
            self.tokens = None
        return result
