"""At login, a build gets credentials only of connections its configuration's project may use.

The model refuses moves that take a login list out of its tree, but a path that does not check (an
UPDATE in a shell or a script, a restored dump) can still leave one there: the server then hands the
agent an error for that login, never its credentials. In process, through the agent protocol.
"""

import json

import pytest

from agent import protocol
from builds.agents import services as agent_services
from connections.models import Project
from tests.factories import (
    BuildConfigurationFactory,
    EcrConnectionFactory,
    LoginConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)
from tests.harness.stand_in import Answer, StandIn

pytestmark = pytest.mark.django_db
HEADER = {"HTTP_X_DOCKERSUPPORT_PROTOCOL": str(protocol.PROTOCOL_VERSION)}
SECRET = "acme-registry-secret-23"


@pytest.fixture
def call(client):
    def request(method, url, token, data=None):
        body = json.dumps(data) if data is not None else None
        return getattr(client, method)(url, data=body, content_type="application/json",
                                       HTTP_AUTHORIZATION=f"Bearer {token}", **HEADER)

    return request


@pytest.fixture
def tree():
    """acme ─ team-a; configuration app of team-a logs in with acme's reg and with team-a's own."""
    acme = ProjectFactory(ident="acme")
    team_a = ProjectFactory(ident="team-a", parent=acme)
    app = BuildConfigurationFactory(project=team_a, ident="app")
    LoginConnectionFactory(configuration=app, connection=RegistryConnectionFactory(
        project=acme, ident="reg", registry="registry.acme.test", password=SECRET))
    LoginConnectionFactory(configuration=app, optional=True, connection=RegistryConnectionFactory(
        project=team_a, ident="own", registry="registry.team-a.test", password="team-a-secret"), position=1)
    return app


@pytest.fixture
def agent_token():
    _, token, _ = agent_services.agent_token_issue(name="agent-1")
    return token


def move_unchecked(ident, parent):
    """What a shell's UPDATE does: no clean, no check."""
    Project.objects.filter(ident=ident).update(parent=parent)


def start(call, token):
    response = call("post", "/api/v1/agent/builds/", token, {"configuration": "app"})
    assert response.status_code == 201, response.content
    return protocol.from_json(protocol.BuildStarted, response.json()), response.content.decode()


def test_a_login_outside_the_configurations_tree_gets_an_error_and_never_its_credentials(call, tree, agent_token):
    move_unchecked("team-a", ProjectFactory(ident="other"))
    started, body = start(call, agent_token)
    reg, own = started.logins
    assert reg.error == (
        "login with connection 'acme/reg' refused: it belongs to project 'acme', which is not project 'team-a' of "
        "configuration 'app' or one of its ancestors (the project tree changed); give the configuration a "
        "connection of its project or its ancestors"
    )
    assert (reg.username, reg.password, reg.optional) == ("", "", False)  # a required login: the build will not run
    assert (own.error, own.password) == ("", "team-a-secret")  # its own connection is still handed out
    assert SECRET not in body
    # Asked again while the build runs: the same answer.
    credentials = call("get", f"/api/v1/agent/builds/{started.build.id}/credentials/", started.token)
    assert credentials.status_code == 200 and SECRET not in credentials.content.decode()
    assert "refused: it belongs to project 'acme'" in credentials.json()["logins"][0]["error"]


def test_an_optional_login_outside_the_tree_stays_optional(call, tree, agent_token):
    login = tree.logins.get(connection__ident="reg")
    login.optional = True
    login.save()
    move_unchecked("team-a", None)
    started, _ = start(call, agent_token)
    assert started.logins[0].optional and "refused" in started.logins[0].error


def test_within_the_tree_the_credentials_are_handed_out(call, tree, agent_token):
    started, _ = start(call, agent_token)
    assert [(login.error, login.password) for login in started.logins] == [("", SECRET), ("", "team-a-secret")]


def test_no_request_reaches_aws_for_an_ecr_login_outside_the_tree(call, agent_token):
    refuse = Answer(400, {"Content-Type": "application/x-amz-json-1.1"},
                    b'{"__type": "AccessDeniedException", "message": "stand-in refuses"}')
    with StandIn("127.0.0.2", lambda request: refuse) as aws:
        acme = ProjectFactory(ident="acme")
        app = BuildConfigurationFactory(project=ProjectFactory(ident="team-a", parent=acme), ident="app")
        LoginConnectionFactory(configuration=app, connection=EcrConnectionFactory(
            project=acme, ident="ecr", endpoint_url=aws.url))
        inside, _ = start(call, agent_token)
        assert "AccessDeniedException" in inside.logins[0].error and aws.requests  # inside the tree AWS is asked
        asked = len(aws.requests)
        move_unchecked("team-a", None)
        outside, _ = start(call, agent_token)
    assert "refused: it belongs to project 'acme'" in outside.logins[0].error
    assert len(aws.requests) == asked
