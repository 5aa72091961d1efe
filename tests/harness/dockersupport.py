"""dockersupport itself as processes: the server (runserver on a free port) and agents.

An agent gets only what a build host has: its token file, its Docker daemon (DOCKER_HOST), its
folder (DOCKERSUPPORT_AGENT_DIR) and the server's URL; none of the server's settings.
"""

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .service import Service, free_port

ROOT = Path(__file__).resolve().parents[2]
MANAGE = str(ROOT / "manage.py")
# What a build host's environment has besides the agent's own settings.
HOST_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


class ServerProcess(Service):
    """The server on a database: `manage.py runserver`, or uvicorn (ASGI, as in production) with `asgi=True`."""

    name = "server"
    start_timeout = 60.0

    def __init__(self, database_url: str, settings_module: str = "dockersupport_site.test_settings",
                 asgi: bool = False, tls: tuple[str, str, str] | None = None, **env):
        """`tls`: (certificate, key, CA certificate) to serve https (uvicorn only)."""
        super().__init__()
        self.database_url, self.settings_module, self.asgi, self.extra_env = database_url, settings_module, asgi, env
        self.tls = tls
        self.asgi = asgi or bool(tls)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}" if self.tls else \
            f"http://127.0.0.1:{self.port}"

    def _environment(self):
        inherited = {k: v for k, v in os.environ.items() if k != "DEBUG"}  # DEBUG only when asked for
        return {**inherited, "DATABASE_URL": self.database_url, "PYTHONPATH": str(ROOT),
                "DJANGO_SETTINGS_MODULE": self.settings_module, **self.extra_env}

    def _command(self):
        if self.asgi:
            tls = ["--ssl-certfile", self.tls[0], "--ssl-keyfile", self.tls[1]] if self.tls else []
            return [sys.executable, "-m", "uvicorn", "dockersupport_site.asgi:application", "--host", "127.0.0.1",
                    "--port", str(self.port), "--no-access-log", *tls]
        return [sys.executable, MANAGE, "runserver", f"127.0.0.1:{self.port}", "--noreload"]

    def _ready(self):
        """Answers at all: /health/ is served before host checks and the HTTPS redirect (503 is an answer)."""
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=self.tls[2])
        try:
            with urllib.request.urlopen(f"{self.url}/health/", timeout=10, context=context):
                return True
        except urllib.error.HTTPError:
            return True


class AgentProcess(Service):
    """`manage.py agent` with its own token and folder (kept across restart())."""

    name = "agent"
    start_timeout = 60.0

    def __init__(self, server_url: str, token: str, docker_host: str, **env):
        super().__init__()
        self.server_url, self.token, self.docker_host, self.extra_env = server_url, token, docker_host, env

    @property
    def directory(self) -> str:
        return os.path.join(self.root, "agent")

    @property
    def token_file(self) -> str:
        return os.path.join(self.root, "token")

    def _prepare(self):
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.token + "\n")

    def _environment(self):
        environment = {name: os.environ[name] for name in HOST_VARIABLES if name in os.environ}
        environment.update(HOME=self.root, DOCKER_HOST=self.docker_host, DOCKERSUPPORT_AGENT_DIR=self.directory,
                           PYTHONUNBUFFERED="1", **self.extra_env)
        return environment

    def _command(self):
        return [sys.executable, MANAGE, "agent", "--server", self.server_url, "--token-file", self.token_file]

    def start(self):
        # The log is appended to across restarts: readiness is read from what this start writes.
        self._offset = os.path.getsize(self.log_path) if self.root and os.path.exists(self.log_path) else 0
        return super().start()

    def _ready(self):
        with open(self.log_path, errors="replace") as log:
            log.seek(self._offset)
            return " ready: " in log.read()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()

    def stop(self, keep_data=False):
        """Stops the agent; for good (not keep_data), the builds' own Docker endpoints it left running too
        (they outlive an agent by design: agent.endpoints)."""
        directory = self.directory if self.root else None
        super().stop(keep_data=keep_data)
        if directory and not keep_data:
            from .dockerd import _kill_processes_mentioning

            _kill_processes_mentioning(os.path.join(directory, "endpoints") + os.sep)
        return self

    def endpoint_processes(self) -> list[int]:
        """The pids of the builds' own Docker endpoints this agent started that still run."""
        needle = os.fsencode(os.path.join(self.directory, "endpoints") + os.sep)
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        found.append(int(pid))
            except OSError:
                pass
        return found


def private_ca(folder: str, host: str = "localhost") -> tuple[str, str, str]:
    """A CA of our own and a server certificate for `host` it signed: (certificate, key, CA) files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockersupport test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(folder, name) for name in ("server.pem", "server.key", "ca.pem"))
    with open(paths[0], "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with open(paths[2], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    return paths
