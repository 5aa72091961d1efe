"""Applying settings: idempotent and atomic; every error of the file with its path, and any error
changes nothing. Objects the file does not mention are left alone: apply adds and updates, it never
deletes (but a configuration's login list, an agent's project list and, when the file gives one, a
project's members are replaced by the file's)."""

import re
from collections import Counter
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from agent.cleanup import CleanupError, parse_size
from connections.models import Connection, Membership, Project
from connections.selectors import connection_nearest

from ..login.services import login_hosts_validate
from ..models import Agent, BuildConfiguration, LoginConnection
from .format import (
    AGENT_KEYS,
    ALL_TYPE_KEYS,
    CONFIGURATION_KEYS,
    CONNECTION_KEYS,
    DOCKER_SUPPORT_KEYS,
    FIELD_KEYS,
    LOGIN_KEYS,
    MEMBER_KEYS,
    PROJECT_KEYS,
    RETENTION_KEYS,
    TOP_KEYS,
    TYPE_KEYS,
    SettingsFileError,
    ShapeChecks,
    join_path,
)


@dataclass
class ApplyReport:
    created: Counter = field(default_factory=Counter)
    updated: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)  # members only: nothing else is ever deleted

    def count(self, kind: str, outcome: str) -> None:
        getattr(self, outcome)[kind] += 1

    def summary(self) -> str:
        kinds = ("project", "connection", "build configuration", "member", "agent")
        parts = []
        for kind in kinds:
            c, u, n, r = self.created[kind], self.updated[kind], self.unchanged[kind], self.removed[kind]
            if not (c or u or n or r):
                continue
            if kind == "member":
                parts.append(f"members: {c} added, {u} with a new role, {n} unchanged, {r} removed")
            else:
                parts.append(f"{kind}s: {c} created, {u} updated, {n} unchanged")
        return "; ".join(parts) or "nothing to apply"


class _Applier(ShapeChecks):
    def __init__(self):
        super().__init__()
        self.report = ApplyReport()
        self.seen_projects: dict[str, str] = {}
        self.seen_configurations: dict[str, str] = {}
        self.seen_connections: dict[tuple, str] = {}
        self.invalid_connections: set[tuple] = set()
        self.seen_agents: dict[str, str] = {}
        self.moved_projects: list[tuple[Project, str]] = []

    def save(self, obj, path, kind, exclude=()):
        """Validates and saves `obj`; reports model errors under the file's keys."""
        try:
            obj.full_clean(exclude=list(exclude))
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                where = path if name == "__all__" else join_path(path, FIELD_KEYS.get(name, name))
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
        self.check_moves()

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
        # The file may also replace the login lists that the move would break: check_moves looks at the end.
        project.defer_tree_check = True
        moved = project.pk is not None and project._loaded_values["parent_id"] != project.parent_id
        if not self.save(project, path, "project"):
            return
        if moved:
            self.moved_projects.append((project, path))
        for i, item in enumerate(self.sequence(entry.get("connections"), f"{path}.connections")):
            self.connection(item, f"{path}.connections[{i}]", project)
        for i, item in enumerate(self.sequence(entry.get("build_configurations"), f"{path}.build_configurations")):
            self.configuration(item, f"{path}.build_configurations[{i}]", project)
        if "members" in entry:  # without the key, the project's members are left alone
            self.members(entry["members"], f"{path}.members", project)
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
                self.errors.append(f"{join_path(path, key)}: {kind} connections do not take this key")
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
            value = self.scalar(entry.get(key), join_path(path, key))
            if key in Connection.SECRET_FIELDS and key not in entry and key in TYPE_KEYS[kind]:
                continue  # an exported file carries no secrets: keep what is stored
            setattr(connection, key, value if key in TYPE_KEYS[kind] else "")
        connection.repository_type = connection.repository_type or Connection.RepositoryType.PRIVATE
        if connection.repository_type not in Connection.RepositoryType.values:
            self.errors.append(f"{join_path(path, 'repository_type')}: '{connection.repository_type}' is not a "
                               f"repository type ({', '.join(Connection.RepositoryType.values)})")
            self.invalid_connections.add((project.pk, ident))
            return
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
        configuration.exact_attribution = self.scalar(
            support.get("exact_attribution"), f"{path}.docker_support.exact_attribution", (bool,), True,
        )
        for key in ("keep_last", "keep_days"):
            setattr(configuration, key, self.scalar(retention.get(key), f"{path}.retention.{key}", (int,), None))
        configuration.protected_tags = " ".join(self.tag_patterns(support.get("protected_tags"),
                                                                  f"{path}.docker_support.protected_tags"))
        logins = self.logins(support.get("login"), f"{path}.docker_support.login", project)
        configuration.logins_replaced = True  # the file's list, checked against `project`, replaces the old
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
            connection = connection_nearest(project, lambda c: c.ident == ident)
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

    def tag_patterns(self, value, path) -> list[str]:
        """Shell-style tag patterns: a list, or one text separated by spaces or commas."""
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        patterns = []
        for i, item in enumerate(self.sequence(value, path)):
            pattern = self.scalar(item, f"{path}[{i}]")
            if not pattern or any(c.isspace() or c == "," for c in pattern):
                self.errors.append(f"{path}[{i}]: '{pattern}' is not a tag pattern (like latest, v*, release-*)")
            else:
                patterns.append(pattern)
        return patterns

    def regexes(self, value, path) -> list[str]:
        patterns = []
        for i, item in enumerate(self.sequence(value, path)):
            pattern = self.scalar(item, f"{path}[{i}]")
            try:
                re.compile(pattern)
            except re.error as exc:
                self.errors.append(f"{path}[{i}]: '{pattern}' is not a regular expression: {exc}")
                continue
            if "\n" in pattern or not pattern:
                self.errors.append(f"{path}[{i}]: a pattern is one non-empty line")
                continue
            patterns.append(pattern)
        return patterns

    def size(self, value, path) -> int | None:
        """Bytes, or a size like 20G (binary units); nothing: None."""
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            self.errors.append(f"{path}: expected a size like 20G or a number of bytes, got a boolean")
            return None
        try:
            return parse_size(str(value))
        except CleanupError as exc:
            self.errors.append(f"{path}: {exc}")
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

    def members(self, value, path, project):
        """Makes the project's members exactly the file's list, so that access is revoked as code too."""
        user_model = get_user_model()
        wanted, seen, ok = [], {}, True
        for i, item in enumerate(self.sequence(value, path)):
            where = f"{path}[{i}]"
            item = self.mapping(item, where, MEMBER_KEYS, required=("user", "role"))
            if item is None:
                ok = False
                continue
            name = self.scalar(item["user"], f"{where}.user")
            role = self.scalar(item["role"], f"{where}.role")
            if role not in Membership.Role.values:
                self.errors.append(f"{where}.role: '{role}' is not a role ({', '.join(Membership.Role.values)})")
                ok = False
            user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: name}).first() if name else None
            if user is None:
                self.errors.append(
                    f"{where}.user: no user '{name}'; the settings file gives roles to existing users only: create "
                    "the user first (manage.py createsuperuser, or Users in the admin)"
                )
                ok = False
                continue
            if user.pk in seen:
                self.errors.append(f"{where}.user: user '{name}' is listed twice (also at {seen[user.pk]}); "
                                   "a user has one role on a project")
                ok = False
                continue
            seen[user.pk] = where
            wanted.append((user, role, where))
        if ok:
            self._set_members(project, wanted)

    def _set_members(self, project, wanted):
        current = {membership.user_id: membership for membership in project.memberships.all()}
        stale = [pk for pk in current if pk not in {user.pk for user, _, _ in wanted}]
        if stale:
            Membership.objects.filter(project=project, user_id__in=stale).delete()
            self.report.removed["member"] += len(stale)
        for user, role, where in wanted:
            membership = current.get(user.pk) or Membership(project=project, user=user)
            _remember(membership)
            membership.role = role
            self.save(membership, where, "member")

    def check_moves(self):
        """A project the file moved must leave every login list in its subtree inside the tree. Checked once
        the whole file is applied, since the file may replace those login lists too."""
        reported = set()
        for project, path in self.moved_projects:
            where = f"under '{project.parent.ident}'" if project.parent_id else "to the top level"
            for problem in project.tree_problems():
                if problem not in reported:
                    reported.add(problem)
                    hint = "" if problem.startswith("and ") else "; give it a login list of its new tree in this file"
                    self.errors.append(f"{path}: project '{project.ident}' moved {where}: {problem}{hint}")

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
        agent.keep_patterns = "\n".join(self.regexes(entry.get("keep_patterns"), f"{path}.keep_patterns"))
        agent.min_image_age = self.scalar(entry.get("min_image_age"), f"{path}.min_image_age", (int,), 600)
        agent.keep_free_bytes = self.size(entry.get("keep_free"), f"{path}.keep_free")
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
        # The file's list replaces the agent's projects; none: a shared agent that serves every project,
        # unless `shared: false` (what export writes for an agent whose projects were all deleted).
        shared = self.scalar(entry.get("shared"), f"{path}.shared", (bool,), not projects)
        if shared and projects:
            self.errors.append(f"{path}.shared: a shared agent serves every project: list no projects")
            return
        if {p.pk for p in projects} != set(agent.projects.values_list("pk", flat=True)) or agent.shared != shared:
            agent.projects_assign(projects, shared=shared)
            if self.report.unchanged["agent"]:
                self.report.unchanged["agent"] -= 1
                self.report.count("agent", "updated")


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
