"""Registry credentials of a connection, ready for a Docker login."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from connections.models import Connection

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
# An expiring token (ECR) is reused until REUSE_MARGIN before it expires; a running build's token
# is replaced REFRESH_LEAD before it expires (periodic task or run_build's heartbeat).
REUSE_MARGIN = timedelta(minutes=5)
REFRESH_LEAD = timedelta(minutes=15)


class RegistryError(Exception):
    """Credentials could not be obtained; the message quotes the far side and never a secret."""


@dataclass(frozen=True)
class RegistryCredentials:
    server: str  # the key of `auths` in a Docker config.json, and the login's server address
    username: str
    password: str = field(repr=False)
    expires_at: datetime | None = None  # ECR tokens expire; registry passwords do not
    detail: str = ""  # what was verified on the way, for people (e.g. the assumed role)


def docker_server(connection: Connection) -> str:
    """The server address Docker keys credentials by: Docker Hub's legacy URL, else host[:port]."""
    if connection.is_docker_hub:
        return DOCKER_HUB_SERVER
    return connection.registry_address


def credentials_for(connection: Connection, *, session_name: str = "dockersupport",
                    valid_for: timedelta | None = None) -> RegistryCredentials:
    """Raises RegistryError quoting what the far side said.

    `valid_for`: for expiring tokens (ECR), the least time the token must still be valid.
    """
    if connection.type == Connection.Type.AMAZON_ECR:
        from . import ecr  # boto3 is slow to import: only processes that talk to AWS pay for it

        return ecr.ecr_credentials(connection, session_name=session_name, valid_for=valid_for or REUSE_MARGIN)
    return RegistryCredentials(
        server=docker_server(connection), username=connection.username, password=connection.password,
    )
