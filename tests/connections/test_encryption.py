"""Secrets are encrypted at rest, and an unusable key is a clear error, never silent garbage."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection as db
from django.db import transaction

from connections import crypto
from connections.crypto import SecretDecryptionError
from connections.models import Connection
from tests.factories import EcrConnectionFactory, ProjectFactory, RegistryConnectionFactory

ROOT = Path(__file__).resolve().parents[2]


def raw_column(pk: int, column: str) -> str:
    with db.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM connections_connection WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    crypto._fernet.cache_clear()
    yield
    crypto._fernet.cache_clear()


@pytest.mark.django_db
def test_secrets_are_stored_as_fernet_tokens_and_read_back_in_plain_text():
    connection = EcrConnectionFactory(
        credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci",
        secret_access_key="plain-secret-access-key", external_id="plain-external-id",
    )
    for column, plaintext in (("secret_access_key", "plain-secret-access-key"), ("external_id", "plain-external-id")):
        stored = raw_column(connection.pk, column)
        assert plaintext not in stored
        assert stored.startswith("gAAAAA")  # a Fernet token
    reloaded = Connection.objects.get(pk=connection.pk)
    assert reloaded.secret_access_key == "plain-secret-access-key"
    assert reloaded.external_id == "plain-external-id"


@pytest.mark.django_db
def test_the_same_secret_encrypts_differently_each_time():
    a = RegistryConnectionFactory(password="same-password")
    b = RegistryConnectionFactory(password="same-password")
    assert raw_column(a.pk, "password") != raw_column(b.pk, "password")


@pytest.mark.django_db
def test_a_wrong_key_is_a_clear_error(settings):
    connection = RegistryConnectionFactory(password="pw-under-old-key")
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = [Fernet.generate_key().decode()]
    with pytest.raises(SecretDecryptionError) as info:
        Connection.objects.get(pk=connection.pk)
    assert "DOCKERSUPPORT_ENCRYPTION_KEY does not hold the key it was encrypted with" in str(info.value)
    assert "pw-under-old-key" not in str(info.value)


@pytest.mark.django_db
def test_a_missing_key_is_a_clear_error(settings):
    project = ProjectFactory()
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = []
    with pytest.raises(ImproperlyConfigured, match="DOCKERSUPPORT_ENCRYPTION_KEY is not set; generate one with"):
        with transaction.atomic():
            RegistryConnectionFactory(project=project)
    assert not Connection.objects.exists()


def test_a_malformed_key_is_a_clear_error(settings):
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = ["not-a-fernet-key"]
    with pytest.raises(ImproperlyConfigured, match="key 1 is not a valid Fernet key"):
        crypto.encrypt("x")


def test_the_system_checks_report_an_unusable_key(settings):
    from connections.checks import encryption_key_check, encryption_key_deploy_check

    settings.DOCKERSUPPORT_ENCRYPTION_KEY = []
    [warning] = encryption_key_check(None)  # everyday commands still run in a fresh checkout
    assert warning.id == "connections.W001"
    [error] = encryption_key_deploy_check(None)
    assert error.id == "connections.E001"
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = ["not-a-key"]
    [error] = encryption_key_check(None)
    assert error.id == "connections.E001" and "not a valid Fernet key" in error.msg


@pytest.mark.django_db
def test_keys_rotate_without_losing_secrets(settings):
    old_key = settings.DOCKERSUPPORT_ENCRYPTION_KEY[0]
    connection = RegistryConnectionFactory(password="rotating-password")
    new_key = Fernet.generate_key().decode()
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = [new_key, old_key]
    assert Connection.objects.get(pk=connection.pk).password == "rotating-password"
    call_command("rotate_encryption_key", stdout=open(os.devnull, "w"))
    settings.DOCKERSUPPORT_ENCRYPTION_KEY = [new_key]
    assert Connection.objects.get(pk=connection.pk).password == "rotating-password"


def test_no_plaintext_secret_in_the_sqlite_database_file(tmp_path):
    """Applies a settings file to a real SQLite file and searches the file's bytes for the secrets."""
    database = tmp_path / "db.sqlite3"
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(
        "projects:\n"
        "  - id: acme\n"
        "    connections:\n"
        "      - {id: local, type: docker-registry, registry: 127.0.0.1:5000, username: ci,\n"
        "         password: '${REG_PASSWORD}'}\n"
        "      - {id: ecr, type: amazon-ecr, region: eu-west-1, credentials: temporary,\n"
        "         access_key_id: AKIAIOSFODNN7EXAMPLE, secret_access_key: '${AWS_SECRET}',\n"
        "         role_arn: 'arn:aws:iam::123456789012:role/ci', external_id: '${EXT_ID}',\n"
        "         registry_id: '123456789012'}\n"
    )
    secrets = {"REG_PASSWORD": "Registry-Password-7d1e", "AWS_SECRET": "Aws-Secret-Key-93fa", "EXT_ID": "Ext-Id-41c0"}
    env = {**os.environ, **secrets, "DATABASE_URL": f"sqlite:///{database}",
           "DJANGO_SETTINGS_MODULE": "dockersupport_site.test_settings"}
    for args in (["migrate", "-v0"], ["apply_settings", str(settings_file)]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)
    content = database.read_bytes()
    assert b"AKIAIOSFODNN7EXAMPLE" in content  # the file was written, with the non-secret fields
    for value in secrets.values():
        assert value.encode() not in content
