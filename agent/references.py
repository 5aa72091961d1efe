"""Image references as Docker reads them: which registry and repository a name points to."""

DOCKER_HUB = "docker.io"


def registry_and_repository(image: str) -> tuple[str, str]:
    """'127.0.0.1:5000/team/app' → ('127.0.0.1:5000', 'team/app'); 'busybox' → ('docker.io', 'library/busybox').

    The first component is a registry when it has a '.' or ':' or is 'localhost', as for Docker.
    """
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, image
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return registry, repository


def split_reference(reference: str) -> tuple[str, str, str]:
    """'host:5000/team/app:1' → ('host:5000/team/app', '1', ''); a digest after '@' comes third."""
    reference, _, digest = reference.partition("@")
    name, sep, tag = reference.rpartition(":")
    if sep and "/" not in tag:
        return name, tag, digest
    return reference, "", digest
