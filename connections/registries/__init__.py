"""The one door to registries: everything outside this package imports from here.

`credentials_for(connection)` gives the username, password and server address a Docker client logs
in with; `open_registry(connection)` a session with the registry (Registry): its login checked,
its tags and digests, deletions answered as Deletion values (`refused`: these credentials may not
delete it, another connection may). Which kind a registry is (a v2 API, Amazon ECR, Docker Hub or
GitHub's registry deleting through their own APIs) stays behind the door.
"""

from .access import credentials_for, docker_server, open_registry
from .base import (
    MANIFEST_TYPES,
    REFRESH_LEAD,
    REUSE_MARGIN,
    Deletion,
    DeletionResult,
    ForbiddenDestination,
    ImageRef,
    RefusedByRegistry,
    Registry,
    RegistryCredentials,
    RegistryError,
    TransientRegistryError,
    is_digest,
    is_repository_name,
    is_tag,
)

__all__ = [
    "MANIFEST_TYPES", "REFRESH_LEAD", "REUSE_MARGIN", "Deletion", "DeletionResult", "ForbiddenDestination",
    "ImageRef", "RefusedByRegistry", "Registry", "RegistryCredentials", "RegistryError", "TransientRegistryError",
    "credentials_for", "docker_server", "is_digest", "is_repository_name", "is_tag", "open_registry",
]
