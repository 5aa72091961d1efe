"""Settings for the test suite: the normal settings with fixed test keys and fast hashing."""

import os

# A fixed key so that tests are repeatable; never used outside the test suite.
os.environ.setdefault("DOCKERSUPPORT_ENCRYPTION_KEY", "x4wSSpAHrwsH3EYuxkHzGm9cR4bEXcWyxt8Qz5e5xHA=")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key")

from .settings import *  # noqa: E402,F401,F403

SECURE_SSL_REDIRECT = False
# Static files straight from the apps (no collectstatic in tests; test_deployment runs it).
STATIC_ROOT = None
WHITENOISE_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A file, not memory, so that commands the tests start as processes (run_build) share the test database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    import tempfile

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"dockersupport-test-{os.getpid()}.sqlite3"),
    }
