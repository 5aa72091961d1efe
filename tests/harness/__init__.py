"""Real services for the tests and benchmarks: a Docker daemon, a registry, an AWS test server, Redis.

Each service is a plain class: ``start()`` runs it in a private temporary folder, ``stop()`` ends it
and removes that folder (``stop(keep_data=True)`` keeps it, so ``start()`` brings the same service
back on the same port and data), ``restart()`` does both. They work outside pytest too, e.g.::

    with DockerDaemon() as daemon:
        client = daemon.client()
"""

from .dockerd import BUSYBOX_IMAGE, DockerDaemon, import_busybox_image
from .dockersupport import AgentProcess, ServerProcess
from .moto_server import MotoServer
from .redis import RedisServer, existing_redis_url, redis_answers
from .registry import Registry
from .service import Service, ServiceError, ServiceUnavailable, find_program, free_port, short_tempdir

__all__ = [
    "AgentProcess",
    "BUSYBOX_IMAGE",
    "DockerDaemon",
    "MotoServer",
    "RedisServer",
    "Registry",
    "Service",
    "ServiceError",
    "ServiceUnavailable",
    "ServerProcess",
    "find_program",
    "free_port",
    "short_tempdir",
    "import_busybox_image",
    "existing_redis_url",
    "redis_answers",
]
