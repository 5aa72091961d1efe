"""Settings as code: apply and export, idempotent, atomic, with errors that name their path."""

import io
import textwrap

import pytest
import yaml
from django.core.management import CommandError, call_command

from builds.models import Agent, BuildConfiguration, LoginConnection
from builds.settings_file import SettingsFileError, apply_settings, export_settings, parse_settings
from connections.models import Connection, Membership, Project
from connections.roles import has_role

pytestmark = pytest.mark.django_db

SPEC_EXAMPLE = textwrap.dedent("""
    projects:
      - id: acme                    # stable identifier
        name: ACME
        connections:
          - id: local
            type: docker-registry
            registry: 127.0.0.1:5000
            username: ci
            password: ${REGISTRY_PASSWORD}
          - id: ecr
            type: amazon-ecr
            region: eu-west-1
            credentials: temporary    # access-keys | temporary | default-chain
            access_key_id: ${AWS_ACCESS_KEY_ID}
            secret_access_key: ${AWS_SECRET_ACCESS_KEY}
            role_arn: arn:aws:iam::123456789012:role/ci-push
            external_id: ${ECR_EXTERNAL_ID}
            registry_id: "123456789012"
            endpoint_url: http://127.0.0.1:5055   # optional
        build_configurations:
          - id: app
            name: App image
            docker_support:
              login: [local, {connection: ecr, optional: true}]
              cleanup_pushed_images: true
            retention: {keep_last: 10, keep_days: 30}
        subprojects:
          - id: acme-web
            name: Web
            build_configurations:
              - id: web
                name: Web image
                docker_support: {login: [local]}
    agents:
      - name: agent-1
        projects: [acme]            # optional: the projects it serves (and their subprojects); none = shared
        docker_host: unix:///var/run/docker.sock
        docker_data_path: /var/lib/docker
""")
ENV = {"REGISTRY_PASSWORD": "reg-pass-1", "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
       "AWS_SECRET_ACCESS_KEY": "aws-secret-1", "ECR_EXTERNAL_ID": "external-1"}


def apply_text(text, environ=ENV):
    return apply_settings(parse_settings(text, environ))


def snapshot():
    """Everything apply can change, secrets included, to prove that nothing changed."""
    return (
        list(Project.objects.values_list("ident", "name", "parent__ident", "description")),
        list(Connection.objects.order_by("pk").values()),
        list(BuildConfiguration.objects.values()),
        list(LoginConnection.objects.values_list("configuration__ident", "connection__ident", "optional", "position")),
        list(Agent.objects.values()),
        list(Agent.projects.through.objects.values_list("agent__name", "project__ident")),
    )


def errors_of(text, environ=ENV):
    with pytest.raises(SettingsFileError) as info:
        apply_text(text, environ)
    return info.value.errors


def test_the_spec_example_applies():
    report = apply_text(SPEC_EXAMPLE)
    assert report.created == {"project": 2, "connection": 2, "build configuration": 2, "agent": 1}
    ecr = Connection.objects.get(ident="ecr")
    assert (ecr.secret_access_key, ecr.external_id, ecr.access_key_id) == ("aws-secret-1", "external-1",
                                                                             "AKIAIOSFODNN7EXAMPLE")
    assert Connection.objects.get(ident="local").password == "reg-pass-1"
    app = BuildConfiguration.objects.get(ident="app")
    assert [(login.connection.ident, login.optional) for login in app.logins.all()] == [("local", False), ("ecr", True)]
    assert (app.keep_last, app.keep_days, app.cleanup_pushed_images) == (10, 30, True)
    web = BuildConfiguration.objects.get(ident="web")
    assert web.project.parent.ident == "acme"
    assert [login.connection.project.ident for login in web.logins.all()] == ["acme"]  # the parent's connection
    agent = Agent.objects.get(name="agent-1")
    assert agent.docker_data_path == "/var/lib/docker"
    assert [p.ident for p in agent.projects.all()] == ["acme"]


def test_applying_twice_changes_nothing():
    apply_text(SPEC_EXAMPLE)
    before = snapshot()
    report = apply_text(SPEC_EXAMPLE)
    assert not report.created and not report.updated
    assert report.unchanged == {"project": 2, "connection": 2, "build configuration": 2, "agent": 1}
    assert snapshot() == before


def test_apply_export_apply_round_trip_is_stable():
    apply_text(SPEC_EXAMPLE)
    before = snapshot()
    exported = export_settings()
    report = apply_text(yaml.safe_dump(exported), environ={})  # no secrets, no variables needed
    assert not report.created and not report.updated
    assert snapshot() == before  # stored secrets kept
    assert export_settings() == exported


def test_export_has_no_secret():
    apply_text(SPEC_EXAMPLE)
    out = io.StringIO()
    call_command("export_settings", stdout=out)
    text = out.getvalue()
    for secret in ("reg-pass-1", "aws-secret-1", "external-1"):
        assert secret not in text
    data = yaml.safe_load(text)
    local = data["projects"][0]["connections"][1]
    assert local == {"id": "local", "type": "docker-registry", "registry": "127.0.0.1:5000", "username": "ci"}
    assert data["projects"][0]["build_configurations"][0]["docker_support"]["login"] == [
        "local", {"connection": "ecr", "optional": True},
    ]


def test_an_invalid_file_changes_nothing():
    apply_text(SPEC_EXAMPLE)
    before = snapshot()
    changed = SPEC_EXAMPLE.replace("name: ACME", "name: ACME renamed").replace(
        "role_arn: arn:aws:iam::123456789012:role/ci-push", "role_arn: arn:aws:iam::123:role/ci-push"
    ).replace("keep_last: 10", "keep_last: 3")
    errors = errors_of(changed)
    assert errors == ["projects[0].connections[1].role_arn: 'arn:aws:iam::123:role/ci-push' is not an IAM role ARN "
                      "(like arn:aws:iam::123456789012:role/ci-push)"]
    assert snapshot() == before


def test_an_invalid_file_creates_nothing():
    errors = errors_of(SPEC_EXAMPLE.replace('registry_id: "123456789012"', 'registry_id: "1234"'))
    assert errors == ["projects[0].connections[1].registry_id: '1234' is not a registry ID: "
                      "an AWS account ID is exactly 12 digits"]
    assert snapshot() == ([], [], [], [], [], [])


def test_the_command_reports_every_error_with_its_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        projects:
          - id: acme
            colour: blue
            connections:
              - {id: hub, type: docker-registry, username: ci}
              - {id: x, type: quay}
            build_configurations:
              - {id: app, docker_support: {login: [nope]}, retention: {keep_last: 0}}
        agents:
          - {name: a1, os: plan9}
    """))
    with pytest.raises(CommandError) as info:
        call_command("apply_settings", str(path))
    message = str(info.value)
    assert "nothing was changed; 6 errors" in message
    for line in [
        "projects[0].colour: unknown key",
        "projects[0].connections[0].password: a Docker registry connection needs a password or access token",
        "projects[0].connections[1].type: 'quay' is not a connection type (docker-registry, amazon-ecr)",
        "projects[0].build_configurations[0].docker_support.login[0]: no connection 'nope' in project 'acme' "
        "or its ancestors",
        "agents[0].os: 'plan9' is not one of linux, windows, macos, other",
    ]:
        assert line in message
    assert not Project.objects.exists()


def test_unknown_key_is_reported_even_when_the_rest_is_valid():
    errors = errors_of("projects:\n  - id: acme\n    conections: []\n")
    assert errors == ["projects[0].conections: unknown key (allowed: build_configurations, connections, "
                      "description, id, members, name, subprojects)"]


def test_retention_must_be_positive():
    errors = errors_of("projects:\n  - id: acme\n    build_configurations:\n"
                       "      - {id: app, retention: {keep_last: 0}}\n")
    assert errors == ["projects[0].build_configurations[0].retention.keep_last: must be at least 1; "
                      "leave it empty to not use this rule"]


def test_an_unset_environment_variable_is_an_error():
    with pytest.raises(SettingsFileError) as info:
        parse_settings(SPEC_EXAMPLE, {"REGISTRY_PASSWORD": "x"})
    assert "projects[0].connections[0].password: environment variable REGISTRY_PASSWORD is not set" not in info.value.errors
    assert "projects[0].connections[1].secret_access_key: environment variable AWS_SECRET_ACCESS_KEY is not set" in (
        info.value.errors
    )


def test_dollar_dollar_is_a_literal_dollar():
    data = parse_settings("projects:\n  - {id: acme, name: 'Cost $$5 ${X}'}\n", {"X": "y"})
    assert data["projects"][0]["name"] == "Cost $5 y"


def test_not_yaml_is_reported_with_its_line():
    with pytest.raises(SettingsFileError) as info:
        parse_settings("projects:\n  - id: [unclosed\n", {})
    assert info.value.errors[0].startswith("line ")


def test_a_configuration_cannot_name_another_projects_connection():
    errors = errors_of(textwrap.dedent("""
        projects:
          - id: acme
            connections:
              - {id: acme-reg, type: docker-registry, registry: r.acme.test, username: u, password: p}
          - id: other
            build_configurations:
              - {id: steal, docker_support: {login: [acme-reg]}}
    """))
    assert errors == ["projects[1].build_configurations[0].docker_support.login[0]: no connection 'acme-reg' "
                      "in project 'other' or its ancestors"]


def test_a_subproject_connection_is_not_usable_by_its_parent():
    errors = errors_of(textwrap.dedent("""
        projects:
          - id: acme
            build_configurations:
              - {id: app, docker_support: {login: [child-reg]}}
            subprojects:
              - id: child
                connections:
                  - {id: child-reg, type: docker-registry, registry: r.child.test, username: u, password: p}
    """))
    assert errors == ["projects[0].build_configurations[0].docker_support.login[0]: no connection 'child-reg' "
                      "in project 'acme' or its ancestors"]


def test_two_logins_to_one_registry_host_are_a_configuration_error():
    errors = errors_of(textwrap.dedent("""
        projects:
          - id: acme
            connections:
              - {id: a, type: docker-registry, registry: 127.0.0.1:5000, username: u, password: p}
              - {id: b, type: docker-registry, registry: 'http://127.0.0.1:5000', username: v, password: q}
            build_configurations:
              - {id: app, docker_support: {login: [a, b]}}
    """))
    assert errors == ["projects[0].build_configurations[0].docker_support.login[1]: connections 'a' and 'b' both "
                      "log in to 127.0.0.1:5000; a Docker config holds one credential per registry host"]


def test_duplicate_ids_are_reported():
    errors = errors_of("projects:\n  - {id: acme}\n  - {id: acme}\n")
    assert errors == ["projects[1].id: project 'acme' is already defined at projects[0]"]


def test_removing_a_login_from_the_file_removes_it():
    apply_text(SPEC_EXAMPLE)
    report = apply_text(SPEC_EXAMPLE.replace("login: [local, {connection: ecr, optional: true}]", "login: [ecr]"))
    assert report.updated["build configuration"] == 1
    app = BuildConfiguration.objects.get(ident="app")
    assert [(login.connection.ident, login.optional) for login in app.logins.all()] == [("ecr", False)]


def test_changing_a_secret_updates_it():
    apply_text(SPEC_EXAMPLE)
    apply_text(SPEC_EXAMPLE, {**ENV, "REGISTRY_PASSWORD": "rotated"})
    assert Connection.objects.get(ident="local").password == "rotated"


def test_an_agents_project_list_replaces_its_projects_and_an_unknown_one_is_named():
    apply_text(SPEC_EXAMPLE)
    shared = SPEC_EXAMPLE.replace("projects: [acme]", "projects: []")
    report = apply_text(shared)
    assert report.updated == {"agent": 1}
    assert not Agent.objects.get(name="agent-1").projects.exists()  # a shared agent now
    assert "projects" not in export_settings()["agents"][0]
    assert errors_of(SPEC_EXAMPLE.replace("projects: [acme]", "projects: [acme, nowhere]")) == [
        "agents[0].projects[1]: no project 'nowhere'"]
    assert not Agent.objects.get(name="agent-1").projects.exists()  # the bad file changed nothing


# Members: roles as code -------------------------------------------------------------------------------------

MEMBERS = textwrap.dedent("""
    projects:
      - id: acme
        members:
          - {user: alice, role: admin}
          - {user: bob, role: developer}
        subprojects:
          - id: acme-web
""")


@pytest.fixture
def users(django_user_model):
    return {name: django_user_model.objects.create_user(username=name) for name in ("alice", "bob", "carol")}


def roles():
    return sorted(Membership.objects.values_list("project__ident", "user__username", "role"))


def test_members_get_their_roles_inherited_by_subprojects(users):
    report = apply_text(MEMBERS)
    assert roles() == [("acme", "alice", "admin"), ("acme", "bob", "developer")]
    assert report.created["member"] == 2
    assert "members: 2 added, 0 with a new role, 0 unchanged, 0 removed" in report.summary()
    web = Project.objects.get(ident="acme-web")
    assert has_role(users["bob"], web, Membership.Role.DEVELOPER)
    assert not has_role(users["bob"], web, Membership.Role.ADMIN)
    again = apply_text(MEMBERS)
    assert again.unchanged["member"] == 2 and not again.created and not again.updated and not again.removed


def test_the_files_members_replace_the_projects_so_access_is_revoked_as_code(users):
    apply_text(MEMBERS)
    Membership.objects.create(project=Project.objects.get(ident="acme"), user=users["carol"], role="viewer")
    report = apply_text(MEMBERS.replace("{user: alice, role: admin}", "{user: alice, role: viewer}")
                        .replace("      - {user: bob, role: developer}\n", ""))
    assert roles() == [("acme", "alice", "viewer")]
    assert (report.updated["member"], report.removed["member"]) == (1, 2)
    assert not has_role(users["bob"], Project.objects.get(ident="acme"), Membership.Role.VIEWER)
    apply_text("projects:\n  - id: acme\n    members: []\n")
    assert roles() == []


def test_a_project_entry_without_members_leaves_its_members_alone(users):
    apply_text(MEMBERS)
    report = apply_text("projects:\n  - {id: acme}\n")
    assert roles() == [("acme", "alice", "admin"), ("acme", "bob", "developer")]
    assert not report.removed


def test_member_errors_name_their_path_and_change_nothing(users):
    apply_text(MEMBERS)
    errors = errors_of(textwrap.dedent("""
        projects:
          - id: acme
            members:
              - {user: alice, role: viewer}
              - {user: zed, role: viewer}
              - {user: bob, role: owner}
              - {user: alice, role: developer}
              - {user: carol, role: viewer, until: 2030-01-01}
              - {user: carol}
    """))
    assert errors == [
        "projects[0].members[1].user: no user 'zed'; the settings file gives roles to existing users only: create "
        "the user first (manage.py createsuperuser, or Users in the admin)",
        "projects[0].members[2].role: 'owner' is not a role (viewer, developer, admin)",
        "projects[0].members[3].user: user 'alice' is listed twice (also at projects[0].members[0]); a user has one "
        "role on a project",
        "projects[0].members[4].until: unknown key (allowed: role, user)",
        "projects[0].members[5].role: required",
    ]
    assert roles() == [("acme", "alice", "admin"), ("acme", "bob", "developer")]


def test_export_writes_members_sorted_by_user_and_the_round_trip_changes_nothing(users):
    apply_text(MEMBERS.replace("{user: alice, role: admin}", "{user: carol, role: viewer}")
               .replace("- id: acme-web\n", "- id: acme-web\n        members: [{user: alice, role: admin}]\n"))
    exported = export_settings()
    assert exported["projects"][0]["members"] == [{"user": "bob", "role": "developer"},
                                                  {"user": "carol", "role": "viewer"}]
    assert exported["projects"][0]["subprojects"][0]["members"] == [{"user": "alice", "role": "admin"}]
    before = roles()
    report = apply_text(yaml.safe_dump(exported), environ={})
    assert not report.created and not report.updated and not report.removed
    assert report.unchanged["member"] == 3
    assert roles() == before


def test_the_command_reports_members_in_its_summary(users, tmp_path):
    path = tmp_path / "members.yaml"
    path.write_text(MEMBERS)
    out = io.StringIO()
    call_command("apply_settings", str(path), stdout=out)
    assert "members: 2 added, 0 with a new role, 0 unchanged, 0 removed" in out.getvalue()


# Moving projects: login lists stay inside their tree ---------------------------------------------------------

TREE = textwrap.dedent("""
    projects:
      - id: acme
        connections:
          - {id: reg, type: docker-registry, registry: r.acme.test, username: u, password: p}
        subprojects:
          - id: team-a
            build_configurations:
              - {id: app, docker_support: {login: [reg]}}
            subprojects:
              - id: team-a-web
                build_configurations:
                  - {id: web, docker_support: {login: [reg]}}
      - id: other
        connections:
          - {id: other-reg, type: docker-registry, registry: r.other.test, username: u, password: p}
""")


def test_a_file_moving_a_project_away_from_its_logins_connections_is_refused_and_changes_nothing():
    apply_text(TREE)
    before = snapshot()
    moved = textwrap.dedent("""
        projects:
          - id: acme
          - id: other
            subprojects:
              - id: team-a
    """)
    assert errors_of(moved) == [
        f"projects[1].subprojects[0]: project 'team-a' moved under 'other': configuration '{ident}' (project "
        f"'{project}') logs in with connection 'reg' of project 'acme', which would no longer be its project or an "
        "ancestor; give it a login list of its new tree in this file"
        for ident, project in (("app", "team-a"), ("web", "team-a-web"))
    ]
    assert snapshot() == before
    # Listed at the top level, a subproject moves there: the same refusal.
    assert errors_of("projects:\n  - id: team-a\n")[0].startswith(
        "projects[0]: project 'team-a' moved to the top level: configuration 'app' (project 'team-a')")
    assert snapshot() == before


def test_a_file_may_move_a_project_and_give_its_configurations_login_lists_of_the_new_tree():
    apply_text(TREE)
    report = apply_text(textwrap.dedent("""
        projects:
          - id: other
            subprojects:
              - id: team-a
                build_configurations:
                  - {id: app, docker_support: {login: [other-reg]}}
                subprojects:
                  - id: team-a-web
                    build_configurations:
                      - {id: web, docker_support: {login: [other-reg]}}
    """), environ={})
    assert report.updated["project"] == 1 and report.updated["build configuration"] == 2
    assert Project.objects.get(ident="team-a").parent.ident == "other"
    assert list(LoginConnection.objects.values_list("configuration__ident", "connection__project__ident")
                .order_by("configuration__ident")) == [("app", "other"), ("web", "other")]


def test_a_configuration_moves_to_another_project_with_its_new_login_list():
    from builds.models import BuildConfiguration
    from builds.settings_file import apply_settings

    def settings(project_of_app, login):
        return {"projects": [
            {"id": "home", "name": "Home", "connections": [
                {"id": "reg", "type": "docker-registry", "registry": "reg.example.test", "username": "u",
                 "password": "p"}],
             "build_configurations": [{"id": "app", "docker_support": {"login": [login]}}]
             if project_of_app == "home" else []},
            {"id": "elsewhere", "name": "Elsewhere", "connections": [
                {"id": "other", "type": "docker-registry", "registry": "other.example.test", "username": "u",
                 "password": "p"}],
             "build_configurations": [{"id": "app", "docker_support": {"login": [login]}}]
             if project_of_app == "elsewhere" else []},
        ]}

    apply_settings(settings("home", "reg"))
    apply_settings(settings("elsewhere", "other"))
    app = BuildConfiguration.objects.get(ident="app")
    assert (app.project.ident, [login.connection.ident for login in app.logins.all()]) == ("elsewhere", ["other"])


# Clean-up settings: a configuration's protected tags, an agent's keep patterns, image age and free space --------

CLEANUP = textwrap.dedent("""
    projects:
      - id: acme
        build_configurations:
          - id: app
            docker_support: {protected_tags: [latest, "v*", release-*]}
    agents:
      - name: agent-1
        keep_patterns: ['^registry\\.example\\.com/base/', 'ci-cache']
        min_image_age: 1800
        keep_free: 20G
""")


def test_protected_tags_and_an_agents_clean_up_settings_apply_and_export_back():
    apply_text(CLEANUP)
    app, agent = BuildConfiguration.objects.get(ident="app"), Agent.objects.get(name="agent-1")
    assert app.protected_tags == "latest v* release-*"
    assert (agent.keep_patterns.splitlines(), agent.min_image_age, agent.keep_free_bytes) == (
        [r"^registry\.example\.com/base/", "ci-cache"], 1800, 20 * 1024**3)
    exported = export_settings()
    assert exported["projects"][0]["build_configurations"][0]["docker_support"]["protected_tags"] == [
        "latest", "v*", "release-*"]
    assert {k: exported["agents"][0][k] for k in ("keep_patterns", "min_image_age", "keep_free")} == {
        "keep_patterns": [r"^registry\.example\.com/base/", "ci-cache"], "min_image_age": 1800,
        "keep_free": 20 * 1024**3}
    assert apply_settings(exported).updated == {}  # the round trip changes nothing


def test_bad_clean_up_settings_are_named_and_change_nothing():
    bad = (CLEANUP.replace("'ci-cache'", "'ci-(cache'").replace("keep_free: 20G", "keep_free: 20X")
           .replace('"v*"', '"v *"'))
    assert errors_of(bad) == [
        "projects[0].build_configurations[0].docker_support.protected_tags[1]: 'v *' is not a tag pattern "
        "(like latest, v*, release-*)",
        "agents[0].keep_patterns[1]: 'ci-(cache' is not a regular expression: missing ), unterminated "
        "subpattern at position 3",
        "agents[0].keep_free: '20X' is not a size: use a number with K, M, G or T (like 500M, 20G, 1T)",
    ]
    assert not Agent.objects.exists() and not BuildConfiguration.objects.exists()


def test_an_agent_whose_projects_were_deleted_is_exported_as_serving_none_and_stays_so():
    apply_text(SPEC_EXAMPLE)
    agent = Agent.objects.get(name="agent-1")
    Project.objects.create(ident="gone", name="Gone")
    agent.projects_assign([Project.objects.get(ident="gone")])
    Project.objects.get(ident="gone").delete()
    exported = export_settings()
    assert exported["agents"][0]["shared"] is False and "projects" not in exported["agents"][0]
    apply_settings(exported)
    assert not Agent.objects.get(name="agent-1").shared
    assert errors_of(SPEC_EXAMPLE.replace("projects: [acme]", "projects: [acme]\n    shared: true")) == [
        "agents[0].shared: a shared agent serves every project: list no projects"]
