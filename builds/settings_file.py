"""Settings as code: apply a YAML settings file to the database, and export the database as one.

Applying is idempotent and atomic: every error of the file is collected with its path
(`projects[0].connections[1].role_arn: not an IAM role ARN`) and any error changes nothing.
`${VAR}` in a string is taken from the environment (`$$` is a literal `$`). Export writes no
secret; applying an exported file keeps the secrets already stored. Objects that the file does
not mention are left alone: apply adds and updates, it never deletes. A file may come from an
untrusted hand: reading refuses, as errors, files over 1 MiB, alias bombs, self-referencing
anchors, deep nesting, and `${VAR}` naming one of the server's own settings.
"""

import os
import re
from collections import Counter
from dataclasses import dataclass, field

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from connections.models import Connection, Project

from .models import Agent, BuildConfiguration, LoginConnection
from .services import login_hosts_validate

_VAR_RE = re.compile(r"\$(?:\{([^}]*)\}|\$)")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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


@dataclass
class ApplyReport:
    created: Counter = field(default_factory=Counter)
    updated: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)

    def count(self, kind: str, outcome: str) -> None:
        getattr(self, outcome)[kind] += 1

    def summary(self) -> str:
        kinds = ("project", "connection", "build configuration", "agent")
        parts = []
        for kind in kinds:
            c, u, n = self.created[kind], self.updated[kind], self.unchanged[kind]
            if c or u or n:
                parts.append(f"{kind}s: {c} created, {u} updated, {n} unchanged")
        return "; ".join(parts) or "nothing to apply"


# --- Reading -----------------------------------------------------------------------------------

# A settings file lists projects, connections and agents: even a large organisation's is a few
# hundred kilobytes. The limit keeps a mistaken or hostile file (a log, an image) from being read
# into memory and parsed.
MAX_FILE_BYTES = 1024 * 1024
# Nesting: a project is two levels (its mapping and its subprojects list), so this allows project
# trees far deeper than any real one, and keeps PyYAML's recursive composer (and our own recursive
# walks) well below Python's recursion limit: 10,000 nested `[` is an error, not a RecursionError.
MAX_DEPTH = 100
# Aliases: `*name` makes the parser hand back the anchored node again, shared, at no cost, but
# everything after it (substitution, validation, the database) walks the data as a tree. Nested
# lists of aliases of aliases ("billion laughs") grow that tree exponentially: 9 aliases a level,
# 9 levels, is a 430-byte file and 387 million nodes. So we count, while composing, how many nodes
# each alias stands for (a node's expanded size, memoized on the node, so counting costs one pass
# over the file) and refuse once the aliases of a file add more than this many nodes in all. A
# file that reuses an anchor a few times (a login list, a retention block) adds dozens or
# hundreds; an alias-free file is limited only by its size.
MAX_ALIAS_NODES = 100_000
TEXT_CHARS_PER_NODE = 64

# `${VAR}` reads the environment of the process that applies the file, which is the server's own:
# these variables hold its keys and passwords (the encryption key, the database and broker URLs
# with their passwords, the admin password of ensure_superuser). A file that names one would store
# it in a field that export_settings prints and the admin shows.
SERVER_VARIABLES = frozenset({"SECRET_KEY", "DATABASE_URL", "CACHE_URL"})
SERVER_VARIABLE_PREFIXES = ("DOCKERSUPPORT_", "CELERY_", "DJANGO_")


def read_settings(handle, name: str) -> str:
    """The text of a settings file from a stream, reading at most MAX_FILE_BYTES + 1 bytes (or
    characters, from a text stream: parse_settings checks the size in bytes again)."""
    data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        try:
            size = os.fstat(handle.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            size = 0  # a pipe or an in-memory stream has no size to report
        raise SettingsFileError([_too_large(size if size > MAX_FILE_BYTES else None, name)])
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsFileError([
            f"{name}: not UTF-8 text (byte {exc.start}); save the settings file as UTF-8"
        ]) from None


def _too_large(size: int | None, name: str | None = None) -> str:
    what = f"{size} bytes" if size is not None else f"more than {MAX_FILE_BYTES} bytes"
    return (f"{name + ': ' if name else ''}the settings file is {what}; the limit is {MAX_FILE_BYTES} bytes (1 MiB): "
            "split it into several files (apply never deletes what a file does not mention)")


def parse_settings(text: str, environ=None) -> dict:
    """YAML text to a dict with `${VAR}` substituted; raises SettingsFileError."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FILE_BYTES:
        raise SettingsFileError([_too_large(size)])
    try:
        data = yaml.load(text, Loader=_SettingsLoader)  # a SafeLoader with limits, never yaml.Loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SettingsFileError([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors: a date like 2024-13-45, a number of thousands of digits.
        raise SettingsFileError([f"not a valid value: {str(exc)[:200]}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsFileError(["(top level): expected a mapping with 'projects' and/or 'agents'"])
    errors: list[str] = []
    data = _substitute(data, "", os.environ if environ is None else environ, errors)
    if errors:
        raise SettingsFileError(errors)
    return data


class _SettingsLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing self-referencing aliases, deep nesting and alias bombs.

    The checks are made while the node graph is composed, before anything is constructed or
    walked, so each is an error naming its line as soon as the parser reaches it.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: dict[str, yaml.Mark] = {}  # anchors whose node is still being composed
        self._alias_nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise SettingsFileError([
                    f"{_at(event.start_mark)}alias *{event.anchor} is inside the node it refers to "
                    f"(&{event.anchor} at {_where(self._open_anchors[event.anchor])}): a value cannot "
                    "contain itself; write the repeated part out"
                ])
            node = super().compose_node(parent, index)
            self._alias_nodes += node.expanded_size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise SettingsFileError([
                    f"{_at(event.start_mark)}aliases expand the file to more than {MAX_ALIAS_NODES} "
                    f"extra values (*{event.anchor} alone stands for {node.expanded_size}); reuse an "
                    "anchor a few times, not aliases of aliases, or write the values out"
                ])
            return node
        if self._depth >= MAX_DEPTH:
            raise SettingsFileError([
                f"{_at(event.start_mark)}nested more than {MAX_DEPTH} levels deep; a settings file "
                "needs far fewer: check the brackets and the indentation"
            ])
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors[anchor] = event.start_mark
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.pop(anchor, None)
        # Children are composed (and sized) before their parent, aliased nodes long before.
        if isinstance(node, yaml.SequenceNode):
            node.expanded_size = 1 + sum(child.expanded_size for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            node.expanded_size = 1 + sum(k.expanded_size + v.expanded_size for k, v in node.value)
        else:
            # A long text counts by its length too: a thousand aliases of one 600 KB text are 600 MB.
            node.expanded_size = 1 + len(node.value) // TEXT_CHARS_PER_NODE
        return node


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _at(mark) -> str:
    return f"{_where(mark)}: "


def _substitute(value, path, environ, errors):
    if isinstance(value, dict):
        return {k: _substitute(v, _join(path, str(k)), environ, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", environ, errors) for i, v in enumerate(value)]
    if isinstance(value, str) and "\x00" in value:
        errors.append(f"{path}: contains a NUL character, which no field can hold")
        return value
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match):
        name = match.group(1)
        if name is None:
            return "$"
        if not _VAR_NAME_RE.match(name):
            errors.append(f"{path}: '${{{name}}}' is not a valid environment variable reference")
            return ""
        if _is_server_variable(name):
            errors.append(
                f"{path}: ${{{name}}} is a setting of the server itself and cannot be used in a settings "
                "file; give the value a variable of its own"
            )
            return ""
        if name not in environ:
            errors.append(f"{path}: environment variable {name} is not set")
            return ""
        return environ[name]

    return _VAR_RE.sub(replace, value)


def _is_server_variable(name: str) -> bool:
    # Upper-cased: Windows' environment ignores case, so ${secret_key} would read SECRET_KEY there.
    name = name.upper()
    return name in SERVER_VARIABLES or name.startswith(SERVER_VARIABLE_PREFIXES)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- Applying ----------------------------------------------------------------------------------

class _Applier:
    def __init__(self):
        self.errors: list[str] = []
        self.report = ApplyReport()
        self.seen_projects: dict[str, str] = {}
        self.seen_configurations: dict[str, str] = {}
        self.seen_connections: dict[tuple, str] = {}
        self.invalid_connections: set[tuple] = set()
        self.seen_agents: dict[str, str] = {}

    # Structure helpers ------------------------------------------------------------------------
    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.errors.append(f"{path}: expected a mapping, got {_kind(value)}")
            return None
        ok = True
        for key in value:
            if key not in allowed:
                # Reported, then ignored, so that the rest of the entry is still checked.
                self.errors.append(f"{_join(path, str(key))}: unknown key (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if value.get(key) in (None, ""):
                self.errors.append(f"{_join(path, key)}: required")
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

    def save(self, obj, path, kind, exclude=()):
        """Validates and saves `obj`; reports model errors under the file's keys."""
        try:
            obj.full_clean(exclude=list(exclude))
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                where = path if name == "__all__" else _join(path, FIELD_KEYS.get(name, name))
                self.errors.extend(f"{where}: {message}" for message in messages)
            return False
        if obj.pk is None:
            obj.save()
            self.report.count(kind, "created")
        elif _changed(obj):
            obj.save()
            self.report.count(kind, "updated")
        else:
            self.report.count(kind, "unchanged")
        return True

    # Sections ---------------------------------------------------------------------------------
    def apply(self, data: dict):
        if self.mapping(data, "(top level)", TOP_KEYS) is None:
            return
        for i, entry in enumerate(self.sequence(data.get("projects"), "projects")):
            self.project(entry, f"projects[{i}]", parent=None)
        for i, entry in enumerate(self.sequence(data.get("agents"), "agents")):
            self.agent(entry, f"agents[{i}]")

    def project(self, entry, path, parent):
        entry = self.mapping(entry, path, PROJECT_KEYS, required=("id",))
        if entry is None:
            return
        ident = self.scalar(entry["id"], f"{path}.id")
        if not self.unique(self.seen_projects, ident, path, "project"):
            return
        project = Project.objects.filter(ident=ident).first() or Project(ident=ident)
        _remember(project)
        project.name = self.scalar(entry.get("name"), f"{path}.name") or ident
        project.description = self.scalar(entry.get("description"), f"{path}.description")
        project.parent = parent
        if not self.save(project, path, "project"):
            return
        for i, item in enumerate(self.sequence(entry.get("connections"), f"{path}.connections")):
            self.connection(item, f"{path}.connections[{i}]", project)
        for i, item in enumerate(self.sequence(entry.get("build_configurations"), f"{path}.build_configurations")):
            self.configuration(item, f"{path}.build_configurations[{i}]", project)
        for i, item in enumerate(self.sequence(entry.get("subprojects"), f"{path}.subprojects")):
            self.project(item, f"{path}.subprojects[{i}]", parent=project)

    def connection(self, entry, path, project):
        entry = self.mapping(entry, path, CONNECTION_KEYS, required=("id", "type"))
        if entry is None:
            return None
        ident = self.scalar(entry["id"], f"{path}.id")
        kind = self.scalar(entry["type"], f"{path}.type")
        if kind not in Connection.Type.values:
            self.errors.append(f"{path}.type: '{kind}' is not a connection type ({', '.join(Connection.Type.values)})")
            return None
        for key in entry:
            if key in ALL_TYPE_KEYS and key not in TYPE_KEYS[kind]:
                self.errors.append(f"{_join(path, key)}: {kind} connections do not take this key")
        if not self.unique(self.seen_connections, (project.ident, ident), path, "connection"):
            return None
        connection = Connection.objects.filter(project=project, ident=ident).first()
        connection = connection or Connection(project=project, ident=ident)
        _remember(connection)
        connection.name = self.scalar(entry.get("name"), f"{path}.name")
        connection.type = kind
        # A secret in the file is given, even when equal to the stored one (Connection._clean_destination).
        connection.secrets_given = frozenset(key for key in Connection.SECRET_FIELDS if key in entry)
        for key in ALL_TYPE_KEYS:
            value = self.scalar(entry.get(key), _join(path, key))
            if key in Connection.SECRET_FIELDS and key not in entry and key in TYPE_KEYS[kind]:
                continue  # an exported file carries no secrets: keep what is stored
            setattr(connection, key, value if key in TYPE_KEYS[kind] else "")
        if not self.save(connection, path, "connection"):
            self.invalid_connections.add((project.pk, ident))

    def configuration(self, entry, path, project):
        entry = self.mapping(entry, path, CONFIGURATION_KEYS, required=("id",))
        if entry is None:
            return
        ident = self.scalar(entry["id"], f"{path}.id")
        if not self.unique(self.seen_configurations, ident, path, "build configuration"):
            return
        configuration = BuildConfiguration.objects.filter(ident=ident).first() or BuildConfiguration(ident=ident)
        _remember(configuration)
        configuration.project = project
        configuration.name = self.scalar(entry.get("name"), f"{path}.name") or ident
        support = self.mapping(entry.get("docker_support") or {}, f"{path}.docker_support", DOCKER_SUPPORT_KEYS)
        retention = self.mapping(entry.get("retention") or {}, f"{path}.retention", RETENTION_KEYS)
        if support is None or retention is None:
            return
        configuration.cleanup_pushed_images = self.scalar(
            support.get("cleanup_pushed_images"), f"{path}.docker_support.cleanup_pushed_images", (bool,), False,
        )
        for key in ("keep_last", "keep_days"):
            setattr(configuration, key, self.scalar(retention.get(key), f"{path}.retention.{key}", (int,), None))
        logins = self.logins(support.get("login"), f"{path}.docker_support.login", project)
        if not self.save(configuration, path, "build configuration") or logins is None:
            return
        if self._set_logins(configuration, logins) and self.report.unchanged["build configuration"]:
            # The row itself was unchanged but its login list was not.
            self.report.unchanged["build configuration"] -= 1
            self.report.count("build configuration", "updated")

    def logins(self, value, path, project):
        """[(connection, optional)] from the login list, or None after an error."""
        result, ok = [], True
        lineage = project.lineage()
        for i, item in enumerate(self.sequence(value, path)):
            where = f"{path}[{i}]"
            if isinstance(item, dict):
                item = self.mapping(item, where, LOGIN_KEYS, required=("connection",))
                if item is None:
                    ok = False
                    continue
                ident = self.scalar(item["connection"], f"{where}.connection")
                optional = self.scalar(item.get("optional"), f"{where}.optional", (bool,), False)
            else:
                ident, optional = self.scalar(item, where), False
            connection = self._find_connection(lineage, ident)
            if connection is None and any((p.pk, ident) in self.invalid_connections for p in lineage):
                ok = False  # the connection's own error is already reported
                continue
            if connection is None:
                self.errors.append(
                    f"{where}: no connection '{ident}' in project '{project.ident}' or its ancestors"
                )
                ok = False
                continue
            if connection in (c for c, _ in result):
                self.errors.append(f"{where}: connection '{ident}' is listed twice")
                ok = False
                continue
            try:
                login_hosts_validate([*(c for c, _ in result), connection])
            except ValidationError as exc:
                self.errors.append(f"{where}: {exc.messages[0]}")
                ok = False
                continue
            result.append((connection, optional))
        return result if ok else None

    @staticmethod
    def _find_connection(lineage, ident):
        """The connection named `ident` nearest up the project tree."""
        for ancestor in lineage:
            found = Connection.objects.filter(project=ancestor, ident=ident).first()
            if found is not None:
                return found
        return None

    def _set_logins(self, configuration, logins) -> bool:
        """Makes the configuration's login list exactly `logins`; True if anything changed."""
        current = {login.connection_id: login for login in configuration.logins.all()}
        wanted = {connection.pk for connection, _ in logins}
        stale = [pk for pk in current if pk not in wanted]
        changed = bool(stale)
        LoginConnection.objects.filter(configuration=configuration, connection_id__in=stale).delete()
        for position, (connection, optional) in enumerate(logins):
            login = current.get(connection.pk)
            if login is not None and (login.optional, login.position) == (optional, position):
                continue
            login = login or LoginConnection(configuration=configuration, connection=connection)
            login.optional, login.position = optional, position
            login.save()
            changed = True
        return changed

    def agent(self, entry, path):
        entry = self.mapping(entry, path, AGENT_KEYS, required=("name",))
        if entry is None:
            return
        name = self.scalar(entry["name"], f"{path}.name")
        if not self.unique(self.seen_agents, name, path, "agent", key="name"):
            return
        agent = Agent.objects.filter(name=name).first() or Agent(name=name)
        _remember(agent)
        agent.os = self.scalar(entry.get("os"), f"{path}.os") or Agent.OS.LINUX
        if agent.os not in Agent.OS.values:
            self.errors.append(f"{path}.os: '{agent.os}' is not one of {', '.join(Agent.OS.values)}")
            return
        agent.docker_host = self.scalar(entry.get("docker_host"), f"{path}.docker_host")
        agent.docker_data_path = self.scalar(entry.get("docker_data_path"), f"{path}.docker_data_path")
        projects = []
        for i, ident in enumerate(self.sequence(entry.get("projects"), f"{path}.projects")):
            ident = self.scalar(ident, f"{path}.projects[{i}]")
            project = Project.objects.filter(ident=ident).first()
            if project is None:
                self.errors.append(f"{path}.projects[{i}]: no project '{ident}'")
            else:
                projects.append(project)
        if not self.save(agent, path, "agent"):
            return
        # The file's list replaces the agent's projects (none: a shared agent that serves every project).
        if {p.pk for p in projects} != set(agent.projects.values_list("pk", flat=True)):
            agent.projects.set(projects)
            if self.report.unchanged["agent"]:
                self.report.unchanged["agent"] -= 1
                self.report.count("agent", "updated")


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _type_names(types) -> str:
    return " or ".join({str: "a string", bool: "true or false", int: "a whole number"}[t] for t in types)


def _remember(obj) -> None:
    """Keeps the field values as loaded, so that saving can tell whether anything changed."""
    obj._loaded_values = None if obj.pk is None else {
        f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields
    }


def _changed(obj) -> bool:
    loaded = getattr(obj, "_loaded_values", None)
    if loaded is None:
        return True
    return any(getattr(obj, name) != value for name, value in loaded.items())


def apply_settings(data: dict) -> ApplyReport:
    """Applies parsed settings in one transaction; raises SettingsFileError and changes nothing."""
    applier = _Applier()
    with transaction.atomic():
        applier.apply(data)
        if applier.errors:
            transaction.set_rollback(True)
    if applier.errors:
        raise SettingsFileError(applier.errors)
    return applier.report


# --- Exporting ---------------------------------------------------------------------------------

def export_settings() -> dict:
    """The database as a settings dict, without secrets."""
    projects = list(Project.objects.all())
    children: dict = {}
    for project in projects:
        children.setdefault(project.parent_id, []).append(project)
    connections: dict = {}
    for connection in Connection.objects.order_by("ident"):
        connections.setdefault(connection.project_id, []).append(connection)
    configurations: dict = {}
    for configuration in BuildConfiguration.objects.order_by("ident").prefetch_related("logins__connection"):
        configurations.setdefault(configuration.project_id, []).append(configuration)

    def project_entry(project):
        entry = {"id": project.ident, "name": project.name}
        if project.description:
            entry["description"] = _escape(project.description)
        if project.pk in connections:
            entry["connections"] = [_connection_entry(c) for c in connections[project.pk]]
        if project.pk in configurations:
            entry["build_configurations"] = [_configuration_entry(c) for c in configurations[project.pk]]
        if project.pk in children:
            entry["subprojects"] = [project_entry(p) for p in sorted(children[project.pk], key=lambda p: p.ident)]
        return entry

    data: dict = {"projects": [project_entry(p) for p in sorted(children.get(None, []), key=lambda p: p.ident)]}
    agents = [_agent_entry(agent) for agent in Agent.objects.order_by("name").prefetch_related("projects")]
    if agents:
        data["agents"] = agents
    return data


def _escape(value: str) -> str:
    return value.replace("$", "$$")


def _connection_entry(connection) -> dict:
    entry = {"id": connection.ident, "type": connection.type}
    if connection.name:
        entry["name"] = _escape(connection.name)
    for key in TYPE_KEYS[connection.type]:
        value = getattr(connection, key)
        if value and key not in Connection.SECRET_FIELDS:
            entry[key] = _escape(value)
    return entry


def _configuration_entry(configuration) -> dict:
    logins = [
        login.connection.ident if not login.optional else {"connection": login.connection.ident, "optional": True}
        for login in configuration.logins.all()
    ]
    entry = {
        "id": configuration.ident,
        "name": _escape(configuration.name),
        "docker_support": {"login": logins, "cleanup_pushed_images": configuration.cleanup_pushed_images},
    }
    retention = {k: getattr(configuration, k) for k in ("keep_last", "keep_days") if getattr(configuration, k)}
    if retention:
        entry["retention"] = retention
    return entry


def _agent_entry(agent) -> dict:
    entry = {"name": agent.name, "os": agent.os}
    if agent.docker_host:
        entry["docker_host"] = _escape(agent.docker_host)
    if agent.docker_data_path:
        entry["docker_data_path"] = _escape(agent.docker_data_path)
    projects = sorted(p.ident for p in agent.projects.all())
    if projects:
        entry["projects"] = projects
    return entry


def dump_settings(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
