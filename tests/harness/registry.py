"""A private Docker registry (Debian's docker-registry, distribution v2) with htpasswd login."""

import os
import secrets
import urllib.error
import urllib.request

from .service import Service, find_program, free_port


class Registry(Service):
    """Registry on 127.0.0.1 with user ``username`` and a random password (bcrypt htpasswd).

    Docker daemons treat 127.0.0.0/8 as an insecure registry, so plain HTTP works. ``stop(keep_data=True)``
    and ``start()`` bring it back on the same port with the same images (outage tests).
    """

    name = "registry"

    def __init__(self, delete_enabled=True, username="ci", password=None, port=None):
        super().__init__()
        self.delete_enabled = delete_enabled
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
        self._requested_port = port
        self.port = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def url(self):
        return f"http://{self.address}"

    @property
    def auth_config(self):
        """For docker-py's push/pull ``auth_config=``."""
        return {"username": self.username, "password": self.password}

    def _prepare(self):
        import bcrypt

        self.program = find_program("docker-registry", "/usr/bin/docker-registry")
        self.port = self._requested_port or free_port()
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=5)).decode()
        with open(os.path.join(self.root, "htpasswd"), "w") as f:
            f.write(f"{self.username}:{hashed}\n")
        with open(os.path.join(self.root, "config.yml"), "w") as f:
            f.write(
                f"""version: 0.1
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
  htpasswd:
    realm: dockersupport-test
    path: {self.root}/htpasswd
"""
            )

    def _command(self):
        return [self.program, "serve", os.path.join(self.root, "config.yml")]

    def _ready(self):
        try:
            urllib.request.urlopen(f"{self.url}/v2/", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        return False
