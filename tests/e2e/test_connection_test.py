"""The connection test, from the command, the admin button and the API, against real services."""

import pytest
from django.urls import reverse

from tests.factories import EcrConnectionFactory, RegistryConnectionFactory, api_token_for
from tests.harness import Registry

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def connection(registry, db):
    return RegistryConnectionFactory(registry=registry.address, username=registry.username,
                                     password=registry.password)


def test_command_prints_ok_and_what_was_verified(manage, connection, registry):
    result = manage("test_connection", connection.project.ident, connection.ident)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK"
    assert f"  verified: registry reached at http://{registry.address}/v2/ (HTTP 401)" in lines
    assert "  verified: credentials of 'ci' accepted" in lines


def test_command_prints_the_failure_and_exits_1(manage, connection):
    connection.password = "not-the-password-81"
    connection.save()
    result = manage("test_connection", connection.project.ident, connection.ident)
    assert result.returncode == 1
    assert result.stdout.startswith(f"FAILED: connection '{connection}': credentials refused by http://")
    assert "UNAUTHORIZED" in result.stdout
    assert "not-the-password-81" not in result.stdout + result.stderr


def test_command_names_an_unknown_connection(manage, connection):
    result = manage("test_connection", connection.project.ident, "nope")
    assert result.returncode == 1
    assert f"no connection 'nope' in project '{connection.project.ident}'" in result.stderr


def test_an_unreachable_registry_is_reported(db):
    from connections.services import connection_test

    connection = RegistryConnectionFactory(registry="127.0.0.1:9")
    result = connection_test(connection)
    assert not result.ok and "cannot be reached" in result.error


def test_admin_button_reports_the_result(admin_client, connection):
    url = reverse("admin:connections_connection_test", args=[connection.pk])
    response = admin_client.post(url, follow=True)
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith(f"✓ Logged in to {connection.registry_address} (the registry answered /v2/ with 200 "
                              "after authentication)")
    assert "it asks for a login (HTTP 401 without credentials)" in message and "(HTTP 401)<" not in message
    assert "credentials of &#x27;ci&#x27; accepted" in message or "credentials of 'ci' accepted" in message


def test_api_tests_a_connection(client, admin_user, connection):
    token = api_token_for(admin_user)
    url = f"/api/v1/projects/{connection.project.ident}/connections/{connection.ident}/test/"
    assert client.post(url).status_code == 401  # token auth required
    response = client.post(url, HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert any("accepted" in line for line in response.json()["verified"])
    missing = client.post(f"/api/v1/projects/{connection.project.ident}/connections/nope/test/",
                          HTTP_AUTHORIZATION=f"Token {token}")
    assert missing.status_code == 404


def test_ecr_connection_test_says_role_and_token_expiry(moto_server, start_service, db):
    from connections.services import connection_test

    ecr_registry = start_service(Registry(username="AWS", password="123456789012-auth-token"))
    connection = EcrConnectionFactory(
        registry=ecr_registry.address, endpoint_url=moto_server.endpoint_url, credentials="temporary",
        role_arn="arn:aws:iam::123456789012:role/ci-push", external_id="ext",
    )
    result = connection_test(connection)
    assert result.ok, result.error
    assert result.verified[0].startswith(
        "assumed role arn:aws:sts::123456789012:assumed-role/ci-push/dockersupport-test-")
    assert "token for registry 123456789012 expires 2015-01-01 00:00:00 UTC" in result.verified[0]
    assert "credentials of 'AWS' accepted" in result.verified
