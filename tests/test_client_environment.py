"""run_build's command environment (agent.client.command_environment): the podman CLI goes through the build's own
endpoint (CONTAINER_HOST) exactly when the docker CLI does."""

from agent.client import command_environment


def test_the_podman_cli_is_sent_to_the_builds_own_endpoint_and_only_there():
    config = "/var/lib/dockersupport-agent/configs/7"
    base = {"PATH": "/usr/bin", "CONTAINER_HOST": "unix:///elsewhere.sock", "DOCKERSUPPORT_TOKEN": "secret"}
    own = command_environment(base, config, f"unix://{config}/docker.sock", "podman")
    assert own["CONTAINER_HOST"] == own["DOCKER_HOST"] == f"unix://{config}/docker.sock"
    assert own["REGISTRY_AUTH_FILE"] == f"{config}/config.json" and "DOCKERSUPPORT_TOKEN" not in own
    # Exact attribution off (or no endpoint could start): the daemon's own socket, and the podman CLI left as it was
    daemon = command_environment(base, config, "unix:///run/podman/podman.sock", "podman")
    assert daemon["DOCKER_HOST"] == "unix:///run/podman/podman.sock"
    assert daemon["CONTAINER_HOST"] == "unix:///elsewhere.sock"
    assert "CONTAINER_HOST" not in command_environment({"PATH": "/usr/bin"}, config, "", "podman")
    # In front of Docker (no libpod API) the podman CLI keeps working on its own storage
    docker = command_environment(base, config, f"unix://{config}/docker.sock", "docker")
    assert docker["DOCKER_HOST"] == f"unix://{config}/docker.sock" and docker["CONTAINER_HOST"] == "unix:///elsewhere.sock"
