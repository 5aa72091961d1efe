"""A registry that repeats the password in its error (and the Basic credentials it was sent) does not get
it shown: the daemon quotes the registry's answer, and the agent strips the password from it in every
form before it reaches the build's output, its record on the server or the agent's log."""

import base64
import json

import pytest

from builds.models import Build
from tests.factories import BuildConfigurationFactory, LoginConnectionFactory
from tests.harness.stand_in import Answer, StandIn

pytestmark = [pytest.mark.e2e]
PASSWORD = 'pw-"r3peat\\ed-ü'  # a quote, a backslash and a non-ASCII letter: quoted differently by each layer


def echoing_registry(kind: str):
    """A registry whose token service refuses the login and repeats what it was sent: as JSON details
    (401: the daemon quotes them as they are) or as text (403: the daemon quotes the body, Go-quoted)."""

    def script(request):
        if request.path.startswith("/v2/"):
            return Answer(401, {"WWW-Authenticate": f'Bearer realm="{stand_in.url}/token",service="echo"'})
        sent = f"wrong password {PASSWORD} ({request.headers.get('Authorization', '')})"
        if kind == "json":
            return Answer(401, {"Content-Type": "application/json"}, json.dumps({"details": sent}).encode())
        return Answer(403, {"Content-Type": "text/plain"}, sent.encode())

    stand_in = StandIn("127.0.0.2", script)
    return stand_in


def forms() -> list[str]:
    basic = base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
    return [PASSWORD, json.dumps(PASSWORD)[1:-1], json.dumps(PASSWORD, ensure_ascii=False)[1:-1], basic,
            basic.rstrip("="), "r3peat"]


@pytest.fixture(params=["json", "text"])
def echoing(request, transactional_db):
    stand_in = echoing_registry(request.param).start()
    login = LoginConnectionFactory(configuration=BuildConfigurationFactory(), connection__registry=stand_in.address,
                                   connection__username="ci", connection__password=PASSWORD)
    yield stand_in, login
    stand_in.stop()


def assert_no_password(*texts):
    for text in texts:
        for form in forms():
            assert form not in text, f"{form!r} in {text!r}"


def test_a_failed_login_never_shows_the_password_a_registry_repeats(manage, agent, echoing):
    stand_in, login = echoing
    result = manage("run_build", login.configuration.ident, "--agent", agent.name, "--", "true")
    assert result.returncode == 1
    assert any(r.path.startswith("/token") for r in stand_in.requests)  # the registry was asked, and answered
    assert "wrong password ***" in result.stderr  # its answer is quoted, without the password
    build = Build.objects.get(configuration=login.configuration)
    assert build.status == Build.Status.ERROR and "wrong password ***" in build.error
    assert_no_password(result.stdout, result.stderr, build.error, agent.process.log())


def test_an_optional_failed_login_warns_without_the_password(manage, agent, echoing):
    _, login = echoing
    login.optional = True
    login.save()
    result = manage("run_build", login.configuration.ident, "--agent", agent.name, "--", "true")
    assert result.returncode == 0, result.stderr
    build = Build.objects.get(configuration=login.configuration)
    assert len(build.warnings) == 1 and "wrong password ***" in build.warnings[0]
    assert_no_password(result.stdout, result.stderr, *build.warnings, agent.process.log())
