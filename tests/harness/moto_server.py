"""moto's AWS test server (ECR, STS, ...) in a process of its own, like a real endpoint."""

import sys
import urllib.request

from .service import Service, ServiceUnavailable, free_port


class MotoServer(Service):
    """``python -m moto.server`` on 127.0.0.1; clients need ``endpoint_url`` and any dummy keys.

    Runs in its temporary folder, so its request recorder (/moto-api/recorder/...) writes there.
    """

    name = "moto"
    region = "eu-west-1"

    def __init__(self, port=None):
        super().__init__()
        self._requested_port = port
        self.port = None

    @property
    def endpoint_url(self):
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self):
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable(f"moto[server] is not installed: {exc}") from exc
        self.port = self._requested_port or free_port()

    def _command(self):
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def _ready(self):
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=2) as response:
            return response.status == 200

    def reset(self):
        """Forget every AWS resource created so far."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def boto3_client(self, service, **kwargs):
        """A boto3 client for this server, with dummy credentials and the default region."""
        import boto3

        kwargs.setdefault("region_name", self.region)
        kwargs.setdefault("aws_access_key_id", "testing")
        kwargs.setdefault("aws_secret_access_key", "testing")
        return boto3.client(service, endpoint_url=self.endpoint_url, **kwargs)
