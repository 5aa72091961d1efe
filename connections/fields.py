"""A model field that stores a secret encrypted (Fernet) and gives it back in plain text.

No maintained package offers this for Django 5.2, so it is a small field on connections.crypto.
The empty string is stored as-is: it means "no secret".
"""

from django.db import models

from . import crypto


class EncryptedTextField(models.TextField):
    description = "Text encrypted at rest with DOCKERSUPPORT_ENCRYPTION_KEY"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("blank", True)
        kwargs.setdefault("default", "")
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        if not value:
            return value
        return crypto.decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if not value:
            return value
        return crypto.encrypt(value)
