"""Image references and registry names as Docker reads them: the one place that knows a registry's identity.

A registry has several spellings: a host in any case, a URL, and Docker Hub's aliases. Login (the
Docker config key), events (which registry a pushed or pulled image is in), the anonymous-pull
warning and clean-up all compare registries through `registry_identity`, so that a build logged in
to Docker Hub under one name is matched with images recorded under another. Both the agent and the
server import it: it uses nothing of Django.
"""

DOCKER_HUB = "docker.io"
# Names Docker Hub answers to. Docker's reference parser maps only index.docker.io to docker.io, but
# registry-1.docker.io (the API host) and registry.hub.docker.com (the older one) are Docker Hub's
# too: its rate limit, its refusal of deletions and its accounts apply to images named with them.
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
# The key Docker's own clients file Docker Hub's credentials under in config.json.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# Amazon ECR Public: one registry for every account (images `public.ecr.aws/<alias>/<repository>`), apart
# from each account's private `<registry ID>.dkr.ecr.<region>.amazonaws.com`.
ECR_PUBLIC = "public.ecr.aws"


def registry_identity(address: str) -> str:
    """A registry's canonical name: 'host[:port]' in lower case, and 'docker.io' for Docker Hub.

    `address` is what a person or Docker writes: empty (Docker Hub), 'host[:port]', a URL (its
    scheme, credentials and path are dropped), or one of Docker Hub's aliases. Ports are kept as
    written, a default one too: Docker keys credentials by 'host:443' and 'host' apart, so a login
    to one does not cover images named with the other.
    """
    host = address.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].rpartition("@")[2].lower()
    if not host or host in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    return host


def is_docker_hub(address: str) -> bool:
    return registry_identity(address) == DOCKER_HUB


def docker_config_key(address: str) -> str:
    """The key of `auths` in a Docker client's config.json for this registry: Docker Hub's legacy URL,
    else host[:port]."""
    identity = registry_identity(address)
    return DOCKER_HUB_CONFIG_KEY if identity == DOCKER_HUB else identity


def registry_and_repository(image: str) -> tuple[str, str]:
    """'127.0.0.1:5000/team/app' → ('127.0.0.1:5000', 'team/app'); 'busybox' → ('docker.io', 'library/busybox').

    The first component is a registry when it has a '.' or ':', is 'localhost' or has a capital
    letter (a repository has none), as for Docker; the registry is given by its identity.
    """
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = registry_identity(first), rest
    else:
        registry, repository = DOCKER_HUB, image
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
