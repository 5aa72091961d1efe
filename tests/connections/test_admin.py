"""The admin never shows a secret, and an empty secret field keeps the stored value."""

import pytest
from django.urls import reverse

from connections.models import Connection
from tests.factories import EcrConnectionFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db


def form_data(connection, **changes):
    data = {name: getattr(connection, name) or "" for name in (
        "ident", "name", "type", "registry", "username", "region", "credentials", "access_key_id", "role_arn",
        "registry_id", "endpoint_url")}
    data.update(project=connection.project_id, password="", secret_access_key="", external_id="")
    data.update(changes)
    return data


def test_change_page_never_shows_the_secret(admin_client):
    connection = RegistryConnectionFactory(password="visible-nowhere-9f2")
    response = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk]))
    assert response.status_code == 200
    assert b"visible-nowhere-9f2" not in response.content
    assert b"A value is stored; leave empty to keep it." in response.content


def test_list_and_project_pages_never_show_secrets(admin_client):
    connection = EcrConnectionFactory(secret_access_key="ecr-secret-77a")
    RegistryConnectionFactory(project=connection.project, password="reg-secret-55b")
    for url in (reverse("admin:connections_connection_changelist"),
                reverse("admin:connections_project_change", args=[connection.project_id])):
        content = admin_client.get(url).content
        assert b"ecr-secret-77a" not in content and b"reg-secret-55b" not in content


def test_empty_secret_field_keeps_the_stored_value(admin_client):
    connection = RegistryConnectionFactory(password="keep-me", username="ci")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(connection, username="ci2"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert (connection.username, connection.password) == ("ci2", "keep-me")


def test_a_new_secret_replaces_the_stored_one(admin_client):
    connection = RegistryConnectionFactory(password="old")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    assert admin_client.post(url, form_data(connection, password="new")).status_code == 302
    connection.refresh_from_db()
    assert connection.password == "new"


def test_adding_a_registry_connection_without_password_names_the_field(admin_client):
    project = ProjectFactory()
    response = admin_client.post(reverse("admin:connections_connection_add"), {
        "project": project.pk, "ident": "hub", "type": "docker-registry", "username": "ci", "password": "",
    })
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["password"] == [
        "a Docker registry connection needs a password or access token"
    ]
    assert not Connection.objects.exists()


def test_changing_the_type_drops_the_old_types_secrets(admin_client):
    connection = RegistryConnectionFactory(password="registry-pw")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(
        connection, type="amazon-ecr", registry="", username="", region="eu-west-1", credentials="default-chain",
        registry_id="123456789012",
    ))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert (connection.type, connection.password) == ("amazon-ecr", "")


def test_admin_pages_open(admin_client):
    RegistryConnectionFactory()
    for name in ("connections_project", "connections_connection", "builds_buildconfiguration", "builds_agent",
                 "builds_build", "builds_dockeroperation", "builds_pushedimage"):
        assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200, name
        if name not in ("builds_build", "builds_dockeroperation", "builds_pushedimage"):
            assert admin_client.get(reverse(f"admin:{name}_add")).status_code == 200, name
