"""The settings file's format: its keys, where the model's field names differ, its errors."""

from connections.models import Connection

DOCKER_REGISTRY_KEYS = ("registry", "username", "password")
ECR_KEYS = ("registry", "region", "credentials", "access_key_id", "secret_access_key", "role_arn", "external_id",
            "registry_id", "endpoint_url")
TYPE_KEYS = {Connection.Type.DOCKER_REGISTRY: DOCKER_REGISTRY_KEYS, Connection.Type.AMAZON_ECR: ECR_KEYS}

PROJECT_KEYS = {"id", "name", "description", "connections", "build_configurations", "subprojects"}
CONNECTION_KEYS = {"id", "name", "type", *DOCKER_REGISTRY_KEYS, *ECR_KEYS}
ALL_TYPE_KEYS = tuple(dict.fromkeys((*DOCKER_REGISTRY_KEYS, *ECR_KEYS)))
CONFIGURATION_KEYS = {"id", "name", "docker_support", "retention"}
DOCKER_SUPPORT_KEYS = {"login", "cleanup_pushed_images"}
RETENTION_KEYS = {"keep_last", "keep_days"}
LOGIN_KEYS = {"connection", "optional"}
AGENT_KEYS = {"name", "os", "docker_host", "docker_data_path", "projects"}
TOP_KEYS = {"projects", "agents"}

# Model field names that differ from the file's keys.
FIELD_KEYS = {
    "ident": "id",
    "keep_last": "retention.keep_last",
    "keep_days": "retention.keep_days",
    "cleanup_pushed_images": "docker_support.cleanup_pushed_images",
}


class SettingsFileError(Exception):
    """The file cannot be applied; `errors` lists each problem as `path: reason`."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))




def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
