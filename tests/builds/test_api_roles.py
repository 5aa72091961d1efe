"""The REST API shows and allows only what the caller's project roles allow.

A project the caller cannot see does not exist for them (404, or "does not exist" for a body's
identifier); one they see but may not act on is a 403 naming their role there.
"""

import json

import pytest
from django.contrib.auth.models import User

from builds.login import services
from builds.models import Build
from connections.models import Membership
from tests.factories import (
    AgentFactory,
    BuildConfigurationFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)

pytestmark = pytest.mark.django_db
Role = Membership.Role


@pytest.fixture
def world():
    """team-a (with a subproject team-a-web) and team-b; alice develops team-a, bob views team-b."""
    team_a, team_b = ProjectFactory(ident="team-a"), ProjectFactory(ident="team-b")
    web = ProjectFactory(ident="team-a-web", parent=team_a)
    users = {name: User.objects.create_user(name, password="pw-" + name) for name in ("alice", "bob", "carol")}
    Membership.objects.create(project=team_a, user=users["alice"], role=Role.DEVELOPER)
    Membership.objects.create(project=team_b, user=users["bob"], role=Role.VIEWER)
    agent = AgentFactory(name="agent-1")  # never connected: a start that passes the checks is a 504
    configurations = {ident: BuildConfigurationFactory(ident=ident, project=project)
                      for ident, project in (("app-a", team_a), ("web", web), ("app-b", team_b))}
    builds = {ident: services.build_start(configuration=configuration, agent=agent, started_by=Build.StartedBy.API)
              for ident, configuration in configurations.items()}
    connections = {"a": RegistryConnectionFactory(ident="reg-a", project=team_a, registry="127.0.0.1:9"),
                   "b": RegistryConnectionFactory(ident="reg-b", project=team_b, registry="127.0.0.1:9")}
    return {"users": users, "builds": builds, "connections": connections}


@pytest.fixture
def as_user(client):
    def call(user, method, url, data=None):
        client.force_login(user)
        body = json.dumps(data) if data is not None else None
        return getattr(client, method)(url, data=body, content_type="application/json")

    return call


def test_the_list_holds_the_builds_of_projects_the_caller_sees_and_subprojects_inherit(world, as_user):
    users = world["users"]
    listed = {name: {b["configuration"] for b in as_user(user, "get", "/api/v1/builds/").json()["results"]}
              for name, user in users.items()}
    assert listed == {"alice": {"app-a", "web"}, "bob": {"app-b"}, "carol": set()}


def test_a_build_of_a_project_the_caller_cannot_see_is_a_404_everywhere(world, as_user):
    alice, other = world["users"]["alice"], world["builds"]["app-b"]
    for method, url, data in (("get", f"/api/v1/builds/{other.pk}/", None),
                              ("get", f"/api/v1/builds/{other.pk}/docker-info/", None),
                              ("post", f"/api/v1/builds/{other.pk}/finish/", {"exit_code": 0}),
                              ("post", f"/api/v1/builds/{other.pk}/heartbeat/", None)):
        assert as_user(alice, method, url, data).status_code == 404, url
    assert Build.objects.get(pk=other.pk).is_running


def test_a_viewer_sees_but_may_not_start_finish_or_beat(world, as_user):
    bob, build = world["users"]["bob"], world["builds"]["app-b"]
    assert as_user(bob, "get", f"/api/v1/builds/{build.pk}/docker-info/").status_code == 200
    started = as_user(bob, "post", "/api/v1/builds/", {"configuration": "app-b", "agent": "agent-1"})
    assert started.status_code == 403
    assert started.json()["detail"] == "you may not start builds in project 'team-b': your role there is viewer"
    for url, data in ((f"/api/v1/builds/{build.pk}/finish/", {"exit_code": 0}),
                      (f"/api/v1/builds/{build.pk}/heartbeat/", None)):
        refused = as_user(bob, "post", url, data)
        assert refused.status_code == 403, url
        assert "your role there is viewer" in refused.json()["detail"]
    assert Build.objects.filter(configuration__ident="app-b").count() == 1
    assert Build.objects.get(pk=build.pk).is_running


def test_a_developer_starts_builds_of_their_project_and_its_subprojects_not_of_another(world, as_user):
    alice = world["users"]["alice"]
    for ident in ("app-a", "web"):  # allowed: the start reaches the agent, which never connected (504)
        response = as_user(alice, "post", "/api/v1/builds/", {"configuration": ident, "agent": "agent-1"})
        assert response.status_code == 504, response.content
    hidden = as_user(alice, "post", "/api/v1/builds/", {"configuration": "app-b", "agent": "agent-1"})
    assert hidden.status_code == 400
    assert "app-b" in hidden.json()["configuration"][0]  # as if it did not exist
    assert Build.objects.filter(configuration__ident="app-b").count() == 1


def test_a_developer_finishes_their_builds(world, as_user):
    build = world["builds"]["web"]
    response = as_user(world["users"]["alice"], "post", f"/api/v1/builds/{build.pk}/finish/", {"exit_code": 0})
    assert response.status_code == 504  # allowed: the logout waits for the agent


def test_the_connection_test_needs_a_developer_and_hides_other_projects(world, as_user):
    users = world["users"]
    url = "/api/v1/projects/{}/connections/{}/test/"
    assert as_user(users["carol"], "post", url.format("team-a", "reg-a")).status_code == 404
    assert as_user(users["alice"], "post", url.format("team-b", "reg-b")).status_code == 404
    refused = as_user(users["bob"], "post", url.format("team-b", "reg-b"))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "you may not test connections in project 'team-b': your role there is viewer"
    tested = as_user(users["alice"], "post", url.format("team-a", "reg-a"))
    assert tested.status_code == 200
    assert tested.json()["ok"] is False  # nothing listens on 127.0.0.1:9; what matters is that it ran


def test_a_role_taken_away_takes_the_access_with_it(world, as_user):
    alice = world["users"]["alice"]
    Membership.objects.filter(user=alice).delete()
    assert as_user(alice, "get", "/api/v1/builds/").json()["results"] == []


def test_a_superuser_sees_and_does_everything(world, as_user):
    root = User.objects.create_superuser("root", password="pw-root")
    assert len(as_user(root, "get", "/api/v1/builds/").json()["results"]) == 3
    build = world["builds"]["app-b"]
    assert as_user(root, "get", f"/api/v1/builds/{build.pk}/docker-info/").status_code == 200
    assert as_user(root, "post", "/api/v1/builds/", {"configuration": "app-b", "agent": "agent-1"}).status_code == 504
