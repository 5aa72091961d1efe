"""The external ID goes to AWS inside an AssumeRole call signed by the connection's base keys: other base keys
need the external ID again, or it would be sent under an identity of whoever set them (and be read in their
CloudTrail). In a save, in the settings file's writer, and in a test of values typed in the admin."""

import pytest
from django.core.exceptions import ValidationError

from connections.models import Connection
from connections.services import connection_test_unsaved
from tests.factories import EcrConnectionFactory

pytestmark = pytest.mark.django_db
ROLE = "arn:aws:iam::123456789012:role/ci-push"


@pytest.fixture
def connection():
    return EcrConnectionFactory(credentials=Connection.Credentials.TEMPORARY, role_arn=ROLE,
                                external_id="stored-external-id-77")


def typed(connection, **values):
    """The connection as a form would have it: stored values, then the typed ones (secrets typed: given)."""
    instance = Connection.objects.get(pk=connection.pk)
    for name, value in values.items():
        setattr(instance, name, value)
    instance.secrets_given = frozenset(name for name in Connection.SECRET_FIELDS if name in values)
    return instance


@pytest.mark.parametrize("values", [
    {"access_key_id": "AKIAATTACKERKEY00000", "secret_access_key": "attacker-secret-key-0123456789"},
    {"secret_access_key": "another-secret-key-0123456789"},
])
def test_other_base_keys_need_the_external_id_again(connection, values):
    instance = typed(connection, **values)
    with pytest.raises(ValidationError) as info:
        instance.full_clean()
    assert "give the external ID again" in " ".join(info.value.message_dict["external_id"])
    result = connection_test_unsaved(instance)  # nothing is sent: it asks for the external ID first
    assert not result.ok and "type the external ID too" in result.error
    assert "stored-external-id-77" not in result.error


def test_the_same_keys_or_the_external_id_typed_again_are_fine(connection):
    typed(connection, name="renamed").full_clean()
    typed(connection, secret_access_key=connection.secret_access_key).full_clean()  # the same secret, retyped
    typed(connection, access_key_id="AKIANEWKEY0000000000", secret_access_key="new-secret-key-0123456789",
          external_id="stored-external-id-77").full_clean()
