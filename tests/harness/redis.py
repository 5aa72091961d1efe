"""Redis for Celery tests: one already running, or a private redis-server without persistence."""

import os
import socket
import urllib.parse

from .service import Service, find_program, free_port


def redis_answers(url, timeout=1.0):
    """True when the Redis server of url answers PING (without AUTH)."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(Service):
    """redis-server on 127.0.0.1 and a free port, nothing saved to disk."""

    name = "redis"
    start_timeout = 15.0

    def __init__(self, port=None):
        super().__init__()
        self._requested_port = port
        self.port = None

    def url(self, db=15):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _prepare(self):
        self.program = find_program("redis-server", "/usr/bin/redis-server")
        self.port = self._requested_port or free_port()

    def _command(self):
        return [
            self.program, "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", self.root, "--daemonize", "no",
        ]  # fmt: skip

    def _ready(self):
        return redis_answers(self.url())


def existing_redis_url():
    """REDIS_URL when it answers, else the default local Redis (db 15) when it answers, else None."""
    for url in (os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/15"):
        if url and redis_answers(url):
            return url
    return None
