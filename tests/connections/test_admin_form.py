"""The connection form: one type's fields at a time, help texts that read right, and the Test connection button,
which tests the values typed in the form without saving them and never sends a stored secret to a new destination.

A small HTTP server stands in for a registry someone points a connection at: it records every Authorization
header it is sent, answering /v2/ like a registry that asks for a Basic login.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from connections.models import Connection, Membership
from connections.services import connection_test_unsaved
from tests.factories import EcrConnectionFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db
Role = Membership.Role


class RecordingRegistry:
    """host:port of a registry stand-in that accepts user `ci` with `good-password` and records what it is sent."""

    def __init__(self):
        seen = self.authorizations = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                header = self.headers.get("Authorization")
                seen.append(header)
                ok = header == "Basic " + base64.b64encode(b"ci:good-password").decode()
                self.send_response(200 if ok else 401)
                if not ok:
                    self.send_header("WWW-Authenticate", 'Basic realm="stand-in"')
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def passwords(self):
        return [base64.b64decode(h.split()[1]).decode().partition(":")[2] for h in self.authorizations if h]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = RecordingRegistry()
    yield server
    server.stop()


@pytest.fixture
def team():
    project = ProjectFactory(ident="team-a")
    users = {name: User.objects.create_user(name, password=f"pw-{name}-1") for name in ("alice", "carol", "bob")}
    Membership.objects.create(project=project, user=users["alice"], role=Role.ADMIN)
    Membership.objects.create(project=project, user=users["carol"], role=Role.DEVELOPER)
    Membership.objects.create(project=project, user=users["bob"], role=Role.VIEWER)
    return project, users


def as_user(user, **kwargs):
    client = Client(**kwargs)
    client.force_login(user)
    return client


def typed(connection, **changes):
    """The POST the connection's form sends, secrets left empty (as the page shows them)."""
    data = {name: getattr(connection, name) or "" for name in (
        "ident", "name", "type", "registry", "username", "region", "credentials", "access_key_id", "role_arn",
        "registry_id", "endpoint_url")}
    data.update(project=connection.project_id, password="", secret_access_key="", external_id="")
    data.update(changes)
    return data


def typed_url(connection=None):
    if connection is None:
        return reverse("admin:connections_connection_test_typed")
    return reverse("admin:connections_connection_test_typed", kwargs={"pk": connection.pk})


def post_json(client, url, data):
    response = client.post(url, data, HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def test_each_type_has_its_own_fieldset_and_the_registry_address_shows_once(admin_client):
    connection = EcrConnectionFactory()
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert 'class="module aligned ds-type ds-type-docker-registry"' in page
    assert 'class="module aligned ds-type ds-type-amazon-ecr"' in page
    assert page.count("Registry address:") == 1
    assert "Images are named with:" in page and "123456789012.dkr.ecr.eu-west-1.amazonaws.com" in page
    assert "connections/connection_form.js" in page


def test_help_texts_keep_their_placeholders(admin_client):
    page = admin_client.get(reverse("admin:connections_connection_add")).content.decode()
    assert "empty means &lt;registry ID&gt;.dkr.ecr.&lt;region&gt;.amazonaws.com" in page


def test_a_read_only_page_keeps_the_placeholders_too(team):
    project, users = team
    connection = EcrConnectionFactory(project=project)
    page = as_user(users["carol"]).get(reverse("admin:connections_connection_change", args=[connection.pk]))
    assert page.context["has_change_permission"] is False
    assert "empty means &lt;registry ID&gt;.dkr.ecr.&lt;region&gt;.amazonaws.com" in page.content.decode()


def test_a_read_only_page_shows_only_the_stored_types_fields(team):
    project, users = team
    connection = RegistryConnectionFactory(project=project, password="never-shown-4c")
    page = as_user(users["bob"]).get(reverse("admin:connections_connection_change", args=[connection.pk]))
    content = page.content.decode()
    assert "ds-type-docker-registry" in content and "ds-type-amazon-ecr" not in content
    assert "never-shown-4c" not in content and "stored (write-only)" in content
    assert 'id="test-connection"' not in content  # a viewer does not test


def test_typed_values_of_a_new_connection_are_tested_and_nothing_is_saved(admin_client, stand_in):
    project = ProjectFactory()
    data = {"project": project.pk, "ident": "new", "type": "docker-registry", "registry": stand_in.address,
            "username": "ci", "password": "good-password"}
    answer = post_json(admin_client, typed_url(), data)
    assert answer["ok"] is True, answer
    assert answer["title"] == f"✓ Logged in to {stand_in.address} (the registry answered /v2/ with 200 after " \
                              "authentication)"
    assert f"registry reached at http://{stand_in.address}/v2/: it asks for a login (HTTP 401 without " \
           "credentials)" in answer["steps"]
    assert "good-password" not in json.dumps(answer)
    assert not Connection.objects.exists()
    wrong = post_json(admin_client, typed_url(), data | {"password": "bad-password"})
    assert wrong["ok"] is False and "credentials refused" in wrong["title"]
    assert "bad-password" not in json.dumps(wrong)


def test_an_unchanged_destination_uses_the_stored_secret(admin_client, stand_in):
    connection = RegistryConnectionFactory(registry=stand_in.address, password="good-password")
    answer = post_json(admin_client, typed_url(connection), typed(connection, name="renamed, not saved"))
    assert answer["ok"] is True, answer
    connection.refresh_from_db()
    assert connection.name == "" and connection.password == "good-password"
    assert stand_in.passwords() == ["good-password"]


def test_a_stored_secret_is_never_sent_to_a_typed_new_address(admin_client, stand_in, registry_elsewhere):
    connection = RegistryConnectionFactory(registry=registry_elsewhere, password="stored-secret-93")
    answer = post_json(admin_client, typed_url(connection), typed(connection, registry=stand_in.address))
    assert answer["ok"] is False
    assert any("give the password again" in error for error in answer["errors"]), answer
    assert stand_in.authorizations == []  # nothing was even asked of the new address
    # With the secret typed, the typed one (only) goes to the new address.
    answer = post_json(admin_client, typed_url(connection), typed(connection, registry=stand_in.address,
                                                                 password="good-password"))
    assert answer["ok"] is True, answer
    assert stand_in.passwords() == ["good-password"]
    connection.refresh_from_db()
    assert (connection.registry, connection.password) == (registry_elsewhere, "stored-secret-93")


@pytest.mark.parametrize("change", [
    {"region": "us-east-1"}, {"registry_id": "210987654321"}, {"endpoint_url": "http://127.0.0.1:9"},
    {"role_arn": "arn:aws:iam::123456789012:role/other"}, {"registry": "127.0.0.1:9"},
])
def test_the_service_drops_stored_secrets_for_any_new_destination(stand_in, change):
    """Even past the form's checks: a moved destination gets only typed secrets, and the test asks for them."""
    connection = EcrConnectionFactory(registry=stand_in.address, endpoint_url=f"http://{stand_in.address}",
                                      credentials="temporary", external_id="ext-secret",
                                      role_arn="arn:aws:iam::123456789012:role/ci-push")
    for name, value in change.items():
        setattr(connection, name, value)
    result = connection_test_unsaved(connection)  # secrets_given is empty: nothing was typed
    assert not result.ok
    assert result.error.endswith("so type the secret access key and the external ID too; a stored secret is only "
                                 "sent to the destination it was given for"), result.error
    assert stand_in.authorizations == []


def test_a_new_type_takes_none_of_the_old_types_secrets(stand_in):
    connection = EcrConnectionFactory(secret_access_key="stored-ecr-secret")
    connection.type, connection.registry, connection.username = "docker-registry", stand_in.address, "ci"
    result = connection_test_unsaved(connection)
    assert not result.ok and "credentials refused" in result.error
    assert "stored-ecr-secret" not in stand_in.passwords() and stand_in.passwords() == [""]


def test_moving_a_docker_registry_connection_in_the_service_asks_for_the_password(stand_in):
    connection = RegistryConnectionFactory(registry="127.0.0.1:9", password="stored-secret-17")
    connection.registry = stand_in.address
    result = connection_test_unsaved(connection)
    assert result.error == ("not tested: registry address changed, so type the password too; a stored secret is "
                            "only sent to the destination it was given for")
    assert stand_in.authorizations == []
    connection.password, connection.secrets_given = "good-password", frozenset({"password"})
    assert connection_test_unsaved(connection).ok
    assert stand_in.passwords() == ["good-password"]


def test_only_those_who_may_edit_and_test_post_typed_values(team, stand_in):
    project, users = team
    connection = RegistryConnectionFactory(project=project, registry=stand_in.address, password="good-password")
    data = typed(connection)
    # A developer tests the saved connection (button on the read-only page), not typed values.
    carol = as_user(users["carol"])
    page = carol.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert reverse("admin:connections_connection_test", args=[connection.pk]) in page
    assert typed_url(connection) not in page
    assert carol.post(typed_url(connection), data).status_code == 403
    assert carol.post(typed_url(), data | {"ident": "x"}).status_code == 403
    saved = carol.post(reverse("admin:connections_connection_test", args=[connection.pk]),
                       HTTP_ACCEPT="application/json").json()
    assert saved["ok"] is True and "good-password" not in json.dumps(saved)
    assert as_user(users["bob"]).post(typed_url(connection), data).status_code == 403
    # Another team's admin: the connection does not exist for them.
    other = User.objects.create_user("erin", password="pw-erin-1")
    Membership.objects.create(project=ProjectFactory(ident="team-b"), user=other, role=Role.ADMIN)
    assert as_user(other).post(typed_url(connection), data).status_code == 404
    # A new connection typed into another team's project is refused by the form: nothing is sent anywhere.
    answer = post_json(as_user(other), typed_url(), data | {"ident": "sneaky", "password": "good-password"})
    assert answer["ok"] is False and any("Select a valid choice" in error for error in answer["errors"])
    assert stand_in.passwords() == ["good-password"]  # carol's test of the saved connection only
    alice = as_user(users["alice"])
    page = alice.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert typed_url(connection) in page and 'class="button" id="test-connection"' in page
    assert post_json(alice, typed_url(connection), data)["ok"] is True


def test_posting_typed_values_needs_the_csrf_token(team, stand_in):
    project, users = team
    connection = RegistryConnectionFactory(project=project, registry=stand_in.address, password="good-password")
    client = as_user(users["alice"], enforce_csrf_checks=True)
    assert client.post(typed_url(connection), typed(connection)).status_code == 403
    assert client.post(reverse("admin:connections_connection_test", args=[connection.pk])).status_code == 403
    assert stand_in.authorizations == []


def test_without_javascript_the_answer_is_a_page(admin_client, stand_in):
    connection = RegistryConnectionFactory(registry=stand_in.address, password="good-password")
    response = admin_client.post(typed_url(connection), typed(connection))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    assert f"✓ Logged in to {stand_in.address}" in response.content.decode()
    assert "good-password" not in response.content.decode()


@pytest.fixture
def registry_elsewhere():
    return "127.0.0.1:9"
