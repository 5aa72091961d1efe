"""System checks: the encryption key must be usable before any secret is stored or read."""

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import crypto


@checks.register(checks.Tags.security, deploy=False)
def encryption_key_check(app_configs, **kwargs):
    try:
        crypto.check_key()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="connections.E001")]
    return []
