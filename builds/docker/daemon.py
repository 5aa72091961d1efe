"""The one module that talks to a Docker daemon through the docker SDK."""

import docker
from docker.errors import APIError, DockerException

from connections.registries import RegistryCredentials


class DaemonError(Exception):
    """The daemon could not be reached or refused a request; the message quotes its answer."""


def daemon_client(docker_host: str = "", timeout: int = 60) -> docker.DockerClient:
    """A client for `docker_host`, or for DOCKER_HOST / Docker's default when empty."""
    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=timeout)
        return docker.from_env(timeout=timeout)
    except DockerException as exc:
        raise DaemonError(f"cannot reach the Docker daemon at {docker_host or 'DOCKER_HOST'}: {exc}") from None


def daemon_verify_login(client: docker.DockerClient, credentials: RegistryCredentials) -> str:
    """Has the daemon check the credentials with the registry (its /auth endpoint).

    docker-py keeps credentials only in this client's memory and writes no file; reauth=True
    makes it ask the registry every time (ECR's username is always AWS, so a cached entry for
    the same username would otherwise be answered without asking). Returns the daemon's status.
    """
    try:
        answer = client.login(
            username=credentials.username, password=credentials.password,
            registry=credentials.server, reauth=True,
        )
    except APIError as exc:
        explanation = exc.explanation or str(exc)
        if isinstance(explanation, bytes):
            explanation = explanation.decode(errors="replace")
        raise DaemonError(explanation.replace(credentials.password, "***")) from None
    except DockerException as exc:
        raise DaemonError(f"the Docker daemon could not be asked: {exc}".replace(credentials.password, "***")) from None
    return (answer or {}).get("Status", "Login Succeeded")
