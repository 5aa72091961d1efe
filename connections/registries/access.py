"""From a connection to its registry: the credentials a Docker login uses, and a session with the registry.

The one place that knows which kind of registry a connection is: ECR (boto3), Docker Hub and GitHub's registry
(which delete through their own APIs: docker_hub.py, github.py), any other (v2); each is imported only by the
processes that talk to it.
"""

from datetime import timedelta

from django.conf import settings

from agent.references import DOCKER_HUB as DOCKER_HUB_IDENTITY
from agent.references import docker_config_key, registry_identity
from connections.models import Connection

from .base import REUSE_MARGIN, Registry, RegistryCredentials


def docker_server(connection: Connection) -> str:
    """The server address Docker keys credentials by: Docker Hub's legacy URL (under any of its
    names), else host[:port]."""
    return docker_config_key(connection.registry_address)


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


def open_registry(connection: Connection, *, session_name: str = "dockersupport", concurrency: int = 10) -> Registry:
    """A session with the connection's registry, for `with`; raises RegistryError when it cannot be opened.

    `session_name` names the AWS role session (ECR); `concurrency`: requests at a time (v2).
    """
    address = connection.registry or connection.registry_address  # a configured URL keeps its scheme
    if connection.type == Connection.Type.AMAZON_ECR:
        from . import ecr

        kind = ecr.EcrPublicRegistry if connection.is_ecr_public else ecr.EcrRegistry
        return kind(connection, address, session_name=session_name)
    kind = deletion_api(connection)
    credentials = credentials_for(connection, session_name=session_name)
    if kind == DOCKER_HUB:
        from .docker_hub import DockerHubRegistry

        return DockerHubRegistry(address, credentials, concurrency=concurrency)
    if kind == GITHUB:
        from .github import GitHubRegistry

        return GitHubRegistry(address, credentials, concurrency=concurrency)
    from .v2_registry import V2Registry

    return V2Registry(address, credentials, concurrency=concurrency)


DOCKER_HUB, GITHUB = "docker-hub", "github"
GITHUB_REGISTRY = "ghcr.io"  # GitHub's container registry, under its one name


def deletion_api(connection: Connection) -> str:
    """Which registry refusing manifest DELETE a connection's is, chosen by its identity: DOCKER_HUB (docker.io, and
    DOCKERSUPPORT_DOCKER_HUB_REGISTRIES), GITHUB (ghcr.io, and DOCKERSUPPORT_GITHUB_REGISTRIES), else ""."""
    if connection.type != Connection.Type.DOCKER_REGISTRY:
        return ""
    identity = connection.registry_address  # its identity (agent/references.py)
    if identity == DOCKER_HUB_IDENTITY or identity in _identities("DOCKERSUPPORT_DOCKER_HUB_REGISTRIES"):
        return DOCKER_HUB
    if identity == GITHUB_REGISTRY or identity in _identities("DOCKERSUPPORT_GITHUB_REGISTRIES"):
        return GITHUB
    return ""


def _identities(setting: str) -> set[str]:
    return {registry_identity(name) for name in getattr(settings, setting, None) or () if name.strip()}
