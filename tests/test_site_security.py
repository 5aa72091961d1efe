"""Debug pages hide passwords inside URLs; HSTS preload only on request."""

import secrets
import sys

import pytest
from cryptography.fernet import Fernet
from django.test import RequestFactory
from django.views.debug import get_default_exception_reporter_filter, technical_500_response

from dockersupport_site.debug import UrlPasswordFilter
from tests.test_site import manage

BROKER = "redis://:hunter2@127.0.0.1:6379/0"
CACHE = "redis://cache-user:hunter3@redis.internal:6379/1"
DATABASE_URL = "postgres://dockersupport:hunter8@db.internal:5432/dockersupport"


@pytest.fixture
def url_settings(settings):
    settings.DEBUG = True
    settings.CELERY_BROKER_URL = BROKER
    settings.CELERY_RESULT_BACKEND = BROKER
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": CACHE},
        "replicas": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                     "LOCATION": ["redis://:hunter4@r1:6379/0", "redis://:hunter5@r2:6379/0"]},
    }
    settings.SOME_MIRROR = "https://mirror-user:hunter6@mirror.example.com/v2/ and postgres://u:hunter7@db/x"
    return settings


PASSWORDS = ("hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7")


def test_the_site_uses_the_url_password_filter():
    assert isinstance(get_default_exception_reporter_filter(), UrlPasswordFilter)


def test_safe_settings_hold_no_password_inside_a_url(url_settings):
    safe = UrlPasswordFilter().get_safe_settings()
    assert not [p for p in PASSWORDS if p in repr(safe)]
    # Only the password is hidden: the rest still helps debugging.
    assert safe["CELERY_BROKER_URL"] == "redis://:********************@127.0.0.1:6379/0"
    assert safe["CACHES"]["default"]["LOCATION"] == "redis://cache-user:********************@redis.internal:6379/1"
    assert safe["CACHES"]["replicas"]["LOCATION"][1] == "redis://:********************@r2:6379/0"
    assert safe["SOME_MIRROR"] == ("https://mirror-user:********************@mirror.example.com/v2/ and "
                                   "postgres://u:********************@db/x")


@pytest.mark.parametrize("value", [
    "redis://127.0.0.1:6379/0", "https://user@example.com/path", "unix:///var/run/docker.sock",
    "http://127.0.0.1:5000/v2/?next=a@b", "plain text: with a colon @ and an at",
])
def test_urls_without_a_password_are_left_alone(value):
    assert UrlPasswordFilter().cleanse_url_passwords(value) == value


def request_from_runserver():
    """A request whose META, like runserver's WSGI environ, carries the process's environment."""
    request = RequestFactory().get("/admin/")
    request.META["DATABASE_URL"] = DATABASE_URL
    return request


def fail_with_a_url_in_a_local_variable(broker_url):
    raise RuntimeError("the broker is down")


# (The page quotes the source lines around each frame's line: the passwords are at the top.)


def test_the_debug_500_page_shows_no_password(url_settings):
    request = request_from_runserver()
    try:
        fail_with_a_url_in_a_local_variable(BROKER)
    except RuntimeError:
        response = technical_500_response(request, *sys.exc_info())
    page = response.content.decode()
    # It is the debug page with the settings, the request's META and the frames' variables.
    assert "the broker is down" in page and "CELERY_BROKER_URL" in page
    assert "redis.internal" in page and "db.internal" in page and "broker_url" in page
    assert not [p for p in (*PASSWORDS, "hunter8") if p in page]


def test_check_deploy_is_clean_without_hsts_preload_and_preload_is_off_by_default():
    production = dict(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="ci.example.com",
                      DOCKERSUPPORT_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECURE_HSTS_PRELOAD)",
                    **production)
    assert result.stdout.splitlines()[-1] == "False", result.stderr
    result = manage("check", "--deploy", "--fail-level", "WARNING", **production)
    assert result.returncode == 0, result.stderr
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECURE_HSTS_PRELOAD)",
                    SECURE_HSTS_PRELOAD="1", **production)
    assert result.stdout.splitlines()[-1] == "True", result.stderr
