"""The settings file's format: its keys, where the model's field names differ, the checks of its shape, its errors."""

from connections.models import Connection

DOCKER_REGISTRY_KEYS = ("registry", "username", "password")
ECR_KEYS = ("repository_type", "registry", "region", "credentials", "access_key_id", "secret_access_key", "role_arn",
            "external_id", "registry_id", "endpoint_url")
TYPE_KEYS = {Connection.Type.DOCKER_REGISTRY: DOCKER_REGISTRY_KEYS, Connection.Type.AMAZON_ECR: ECR_KEYS}

PROJECT_KEYS = {"id", "name", "description", "connections", "build_configurations", "members", "subprojects"}
CONNECTION_KEYS = {"id", "name", "type", *DOCKER_REGISTRY_KEYS, *ECR_KEYS}
ALL_TYPE_KEYS = tuple(dict.fromkeys((*DOCKER_REGISTRY_KEYS, *ECR_KEYS)))
CONFIGURATION_KEYS = {"id", "name", "docker_support", "retention"}
DOCKER_SUPPORT_KEYS = {"login", "cleanup_pushed_images", "protected_tags", "exact_attribution"}
RETENTION_KEYS = {"keep_last", "keep_days"}
LOGIN_KEYS = {"connection", "optional"}
MEMBER_KEYS = {"user", "role"}
AGENT_KEYS = {"name", "os", "docker_host", "docker_data_path", "projects", "shared", "keep_patterns",
              "min_image_age", "keep_free"}
TOP_KEYS = {"projects", "agents"}

# Model field names that differ from the file's keys.
FIELD_KEYS = {
    "ident": "id",
    "keep_last": "retention.keep_last",
    "keep_days": "retention.keep_days",
    "cleanup_pushed_images": "docker_support.cleanup_pushed_images",
    "exact_attribution": "docker_support.exact_attribution",
}


class SettingsFileError(Exception):
    """The file cannot be applied; `errors` lists each problem as `path: reason`."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class ShapeChecks:
    """Checks of the file's shape (mappings, lists, scalars, unique ids): each problem is added to
    `errors` with its path, and checking goes on, so that one reading reports every problem."""

    def __init__(self):
        self.errors: list[str] = []

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.errors.append(f"{path}: expected a mapping, got {_kind(value)}")
            return None
        ok = True
        for key in value:
            if key not in allowed:
                # Reported, then ignored, so that the rest of the entry is still checked.
                self.errors.append(f"{join_path(path, str(key))}: unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if value.get(key) in (None, ""):
                self.errors.append(f"{join_path(path, key)}: required")
                ok = False
        return value if ok else None

    def sequence(self, value, path):
        if value is None:
            return []
        if not isinstance(value, list):
            self.errors.append(f"{path}: expected a list, got {_kind(value)}")
            return []
        return value

    def scalar(self, value, path, types=(str,), default=""):
        if value is None:
            return default
        if isinstance(value, bool) and bool not in types:
            self.errors.append(f"{path}: expected {_type_names(types)}, got a boolean")
            return default
        if not isinstance(value, types):
            if str in types and isinstance(value, (int, float)):
                return str(value)  # YAML reads 5000 or 123456789012 as numbers
            self.errors.append(f"{path}: expected {_type_names(types)}, got {_kind(value)}")
            return default
        return value

    def unique(self, seen: dict, ident, path, what, key="id"):
        if ident in seen:
            name = ident[-1] if isinstance(ident, tuple) else ident
            self.errors.append(f"{path}.{key}: {what} '{name}' is already defined at {seen[ident]}")
            return False
        seen[ident] = path
        return True


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _type_names(types) -> str:
    return " or ".join({str: "a string", bool: "true or false", int: "a whole number"}[t] for t in types)
