"""System checks of the encryption key that protects secrets at rest.

A malformed key is always an error. A missing one is a warning for everyday commands (a fresh
checkout can still run makemigrations) and an error for `check --deploy`; reading or writing a
secret without a key fails with a clear message either way.
"""

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import crypto


def _problem() -> str | None:
    try:
        crypto.check_key()
    except ImproperlyConfigured as exc:
        return str(exc)
    return None


@checks.register(checks.Tags.security)
def encryption_key_check(app_configs, **kwargs):
    problem = _problem()
    if problem is None:
        return []
    if not any(key.strip() for key in settings.DOCKERSUPPORT_ENCRYPTION_KEY):
        return [checks.Warning(f"{problem}; connections' secrets cannot be stored or read without it",
                               id="connections.W001")]
    return [checks.Error(problem, id="connections.E001")]


@checks.register(checks.Tags.security, deploy=True)
def encryption_key_deploy_check(app_configs, **kwargs):
    problem = _problem()
    return [checks.Error(problem, id="connections.E001")] if problem else []
