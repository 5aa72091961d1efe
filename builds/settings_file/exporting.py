"""Exporting settings: the database as a settings file, without any secret (applying it keeps them).

Each project's members are written out (sorted by user name): applying the file gives the same roles."""

import yaml

from connections.models import Connection, Membership, Project

from ..models import Agent, BuildConfiguration
from .format import TYPE_KEYS


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
    members: dict = {}
    for membership in Membership.objects.select_related("user"):
        members.setdefault(membership.project_id, []).append(
            {"user": _escape(membership.user.get_username()), "role": membership.role})

    def project_entry(project):
        entry = {"id": project.ident, "name": project.name}
        if project.description:
            entry["description"] = _escape(project.description)
        if project.pk in connections:
            entry["connections"] = [_connection_entry(c) for c in connections[project.pk]]
        if project.pk in configurations:
            entry["build_configurations"] = [_configuration_entry(c) for c in configurations[project.pk]]
        if project.pk in members:
            entry["members"] = sorted(members[project.pk], key=lambda m: m["user"])
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
        "docker_support": {"login": logins, "cleanup_pushed_images": configuration.cleanup_pushed_images,
                           "exact_attribution": configuration.exact_attribution},
    }
    if configuration.protected_tags.strip():
        entry["docker_support"]["protected_tags"] = configuration.protected_tags.replace(",", " ").split()
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
    elif not agent.shared:  # its projects were all deleted: it serves none, and stays so
        entry["shared"] = False
    patterns = [line for line in agent.keep_patterns.splitlines() if line.strip()]
    if patterns:
        entry["keep_patterns"] = patterns
    if agent.min_image_age != 600:
        entry["min_image_age"] = agent.min_image_age
    if agent.keep_free_bytes:
        entry["keep_free"] = agent.keep_free_bytes
    return entry


def dump_settings(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
