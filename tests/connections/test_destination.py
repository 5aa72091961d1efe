"""Stored secrets stay with their destination: a change of where a connection sends them (type,
registry address, registry ID, region, endpoint URL) must give them again, in the admin, the
settings file and any other writer; the admin's history says what changed."""

import pytest
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.urls import reverse

from connections.models import Connection
from tests.connections.test_admin import form_data
from tests.factories import EcrConnectionFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db


def test_admin_refuses_a_new_address_without_the_password(admin_client):
    connection = RegistryConnectionFactory(registry="registry.example.test:5000", password="stay-here")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(connection, registry="attacker.example.test"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["password"] == [
        "registry address changed: give the password again; a stored secret is only sent to the destination "
        "it was given for"
    ]
    connection.refresh_from_db()
    assert connection.registry == "registry.example.test:5000"


def test_admin_takes_a_new_address_with_the_password_given_again_and_says_so_in_the_history(admin_client):
    connection = RegistryConnectionFactory(registry="registry.example.test:5000", password="same-password")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(connection, registry="mirror.example.test",
                                                 password="same-password"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert (connection.registry, connection.password) == ("mirror.example.test", "same-password")
    entry = LogEntry.objects.get(object_id=str(connection.pk))
    assert entry.get_change_message() == (
        "Changed Registry address (registry.example.test:5000 → mirror.example.test) and Password (replaced)."
    )


def test_admin_history_names_a_replaced_secret_without_its_value(admin_client):
    connection = RegistryConnectionFactory(password="old-secret")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    assert admin_client.post(url, form_data(connection, password="new-secret-77")).status_code == 302
    message = LogEntry.objects.get(object_id=str(connection.pk)).get_change_message()
    assert message == "Changed Password (replaced)."
    assert "new-secret-77" not in message and "old-secret" not in message


@pytest.mark.parametrize("change", [
    {"endpoint_url": "http://attacker.example.test"},
    {"region": "us-east-1"},
    {"registry_id": "210987654321"},
    {"registry": "attacker.example.test"},
])
def test_admin_refuses_moving_an_ecr_connection_without_its_secrets(admin_client, change):
    connection = EcrConnectionFactory(credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci",
                                      external_id="ext-id-1")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(connection, **change))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"secret_access_key", "external_id"}
    assert "give the secret access key again" in errors["secret_access_key"][0]
    assert Connection.objects.get(pk=connection.pk).endpoint_url == connection.endpoint_url


def test_admin_moves_an_ecr_connection_with_its_secrets_given_again(admin_client):
    connection = EcrConnectionFactory(credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci",
                                      external_id="ext-id-1")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    response = admin_client.post(url, form_data(connection, region="us-east-1",
                                                secret_access_key=connection.secret_access_key,
                                                external_id="ext-id-2"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert (connection.region, connection.external_id) == ("us-east-1", "ext-id-2")


def test_other_changes_keep_the_stored_secrets(admin_client):
    connection = RegistryConnectionFactory(password="keep")
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    assert admin_client.post(url, form_data(connection, name="renamed", username="ci2")).status_code == 302
    connection.refresh_from_db()
    assert (connection.name, connection.username, connection.password) == ("renamed", "ci2", "keep")


def test_any_writer_is_refused_a_move_that_keeps_the_secret():
    connection = RegistryConnectionFactory(registry="registry.example.test", password="stay")
    connection.registry = "attacker.example.test"
    with pytest.raises(ValidationError) as refused:
        connection.save()
    assert "give the password again" in refused.value.message_dict["password"][0]
    assert Connection.objects.get(pk=connection.pk).registry == "registry.example.test"
    connection.password = "a-new-one"  # a different secret is a given one
    connection.save()
    connection.secrets_given = frozenset({"password"})  # or one marked as given by its writer
    connection.registry = "third.example.test"
    connection.save()
    assert Connection.objects.get(pk=connection.pk).registry == "third.example.test"


def test_settings_file_refuses_a_new_address_without_the_secret(monkeypatch):
    from builds.settings_file import SettingsFileError, apply_settings, parse_settings

    monkeypatch.setenv("REG_PASSWORD", "file-secret")
    text = """
projects:
  - id: acme
    connections:
      - {id: reg, type: docker-registry, registry: %s, username: ci%s}
"""
    apply_settings(parse_settings(text % ("registry.example.test", ", password: \"${REG_PASSWORD}\"")))
    with pytest.raises(SettingsFileError) as refused:
        apply_settings(parse_settings(text % ("attacker.example.test", "")))
    assert refused.value.errors == [
        "projects[0].connections[0].password: registry address changed: give the password again; a stored "
        "secret is only sent to the destination it was given for"
    ]
    assert Connection.objects.get(ident="reg").registry == "registry.example.test"
    apply_settings(parse_settings(text % ("mirror.example.test", ", password: \"${REG_PASSWORD}\"")))
    assert Connection.objects.get(ident="reg").registry == "mirror.example.test"


def test_a_new_role_needs_the_secrets_again():
    """AssumeRole hands the external ID to the account that owns the role."""
    connection = EcrConnectionFactory(credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci",
                                      external_id="ext-id-1")
    connection.role_arn = "arn:aws:iam::999999999999:role/theirs"
    with pytest.raises(ValidationError) as refused:
        connection.save()
    assert set(refused.value.message_dict) == {"secret_access_key", "external_id"}
