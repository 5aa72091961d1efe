"""ECR tokens: STS AssumeRole with the external ID, GetAuthorizationToken, and the cache policy."""

import base64
import json
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from django.core.cache import cache

from connections.registries import REUSE_MARGIN, RegistryCredentials, RegistryError, credentials_for
from connections.registries.ecr import _cache_put, cache_key, ecr_credentials, role_session_name, token_is_reusable
from tests.factories import EcrConnectionFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
ROLE = "arn:aws:iam::123456789012:role/ci-push"


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def recorder(moto_server):
    """moto's request recorder: what our code really sent to AWS."""
    def call(action, method="POST"):
        request = urllib.request.Request(f"{moto_server.endpoint_url}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()

    call("reset-recording")
    call("start-recording")

    def sent(action_name):
        requests = []
        for line in call("download-recording", method="GET").splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode()
            params = dict(urllib.parse.parse_qsl(body))
            if params.get("Action") == action_name:
                requests.append(params)
        return requests

    yield sent
    call("stop-recording")


@pytest.mark.parametrize("expires_in, reusable", [
    (timedelta(hours=12), True), (timedelta(minutes=6), True), (REUSE_MARGIN, False),
    (timedelta(minutes=4), False), (timedelta(seconds=-1), False), (timedelta(days=-4000), False),
])
def test_a_token_is_reused_until_five_minutes_before_it_expires(expires_in, reusable):
    assert token_is_reusable(NOW + expires_in, now=NOW) is reusable


def test_a_token_without_expiry_is_never_reused():
    assert token_is_reusable(None, now=NOW) is False


def plant(connection, password, expires_in):
    """Puts a token in the shared cache as another process would have."""
    expires_at = datetime.now(timezone.utc) + expires_in
    credentials = RegistryCredentials(server="x", username="AWS", password=password, expires_at=expires_at)
    if expires_in > REUSE_MARGIN:
        _cache_put(cache_key(connection), credentials)
    else:  # _cache_put refuses these; write it as a process with a skewed clock might have
        from connections import crypto

        payload = json.dumps({"server": "x", "username": "AWS", "password": password,
                              "expires_at": expires_at.isoformat(), "detail": ""})
        cache.set(cache_key(connection), crypto.encrypt(payload), timeout=3600)


def test_a_cached_valid_token_is_used_without_asking_aws():
    # The endpoint is closed: asking AWS would fail, so success proves the cache answered.
    connection = EcrConnectionFactory(endpoint_url="http://127.0.0.1:9")
    plant(connection, "cached-token", timedelta(hours=12))
    credentials = ecr_credentials(connection, session_name="build-1")
    assert credentials.password == "cached-token"
    assert "(cached)" in credentials.detail


def test_the_cache_holds_the_token_encrypted():
    connection = EcrConnectionFactory()
    plant(connection, "token-in-cache-5ab1", timedelta(hours=12))
    assert "token-in-cache-5ab1" not in repr(cache.get(cache_key(connection)))


def test_a_token_inside_the_margin_is_not_reused(moto_server):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url)
    plant(connection, "almost-expired", timedelta(minutes=4))
    assert ecr_credentials(connection, session_name="b").password == "123456789012-auth-token"


def test_against_moto_an_expired_token_is_not_cached_nor_reused(moto_server):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url)
    credentials = ecr_credentials(connection, session_name="b")
    assert (credentials.username, credentials.password) == ("AWS", "123456789012-auth-token")
    assert credentials.expires_at < datetime.now(timezone.utc)  # moto answers with 2015
    assert cache.get(cache_key(connection)) is None


def test_the_cache_key_includes_role_and_external_id():
    connection = EcrConnectionFactory(credentials="temporary", role_arn=ROLE, external_id="one")
    first = cache_key(connection)
    connection.external_id = "two"
    second = cache_key(connection)
    connection.role_arn = "arn:aws:iam::123456789012:role/other"
    assert len({first, second, cache_key(connection)}) == 3


def test_sts_assume_role_passes_the_external_id_and_names_the_build(moto_server, recorder):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url, credentials="temporary",
                                      role_arn=ROLE, external_id="ext-7f3a")
    credentials = credentials_for(connection, session_name="dockersupport-app-12")
    [assume_role] = recorder("AssumeRole")
    assert assume_role["ExternalId"] == "ext-7f3a"
    assert assume_role["RoleArn"] == ROLE
    assert assume_role["RoleSessionName"] == "dockersupport-app-12"
    assert "assumed role arn:aws:sts::123456789012:assumed-role/ci-push/dockersupport-app-12" in credentials.detail
    assert credentials.server == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def test_a_blank_external_id_is_left_out_never_sent_empty(moto_server, recorder):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url, credentials="temporary",
                                      role_arn=ROLE, external_id="")
    credentials_for(connection, session_name="b")
    [assume_role] = recorder("AssumeRole")
    assert "ExternalId" not in assume_role


def test_role_session_names_are_made_valid_for_sts():
    assert role_session_name("dockersupport-my app/7") == "dockersupport-my-app-7"
    assert len(role_session_name("x" * 100)) == 64


def test_aws_errors_are_quoted_without_secrets(moto_server):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url, credentials="temporary",
                                      role_arn=ROLE, external_id="ext-secret-e1",
                                      secret_access_key="aws-secret-0d1")
    connection.region = "eu-west-1"
    connection.endpoint_url = "http://127.0.0.1:9"  # nothing listens: AWS cannot be asked
    with pytest.raises(RegistryError) as info:
        credentials_for(connection, session_name="b")
    assert "AWS could not be asked" in str(info.value)
    assert "aws-secret-0d1" not in str(info.value) and "ext-secret-e1" not in str(info.value)


def test_default_credential_chain_takes_keys_from_the_environment(moto_server, monkeypatch, settings):
    settings.DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST = True  # moto is no AWS host
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url, credentials="default-chain",
                                      access_key_id="", secret_access_key="")
    assert credentials_for(connection, session_name="b").password == "123456789012-auth-token"


def test_access_keys_give_a_token(moto_server):
    connection = EcrConnectionFactory(endpoint_url=moto_server.endpoint_url, credentials="access-keys")
    credentials = credentials_for(connection, session_name="b")
    assert (credentials.username, credentials.server) == ("AWS", "123456789012.dkr.ecr.eu-west-1.amazonaws.com")


def test_the_token_cache_on_redis_is_shared_between_processes(redis_url, settings, transactional_db):
    """A token cached by one process is used by another, which never asks AWS (closed endpoint)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.e2e.conftest import database_url

    cache_url = redis_url.replace("redis://", "rediscache://")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": redis_url}}
    try:
        connection = EcrConnectionFactory(endpoint_url="http://127.0.0.1:9")
        from django.core.cache import cache as redis_cache

        redis_cache.delete(cache_key(connection))
        plant(connection, "shared-token-b2", timedelta(hours=12))
        script = ("from connections.models import Connection; from connections.registries import credentials_for;"
                  f"print(credentials_for(Connection.objects.get(pk={connection.pk})).password)")
        env = {**os.environ, "DATABASE_URL": database_url(), "CACHE_URL": cache_url}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        result = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], env=env, capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1] == "shared-token-b2"
    finally:
        redis_cache.delete(cache_key(connection))


def test_a_token_is_cached_for_the_secret_key_that_obtained_it():
    """A wrong secret key typed in a connection test is never answered from the token the right one obtained."""
    connection = EcrConnectionFactory.build(pk=None, secret_access_key="right-secret-key-0123456789")
    typed = EcrConnectionFactory.build(pk=None, access_key_id=connection.access_key_id, region=connection.region,
                                       registry_id=connection.registry_id, secret_access_key="wrong-secret-key-987")
    assert cache_key(connection) != cache_key(typed)
    assert "right-secret-key" not in cache_key(connection)


def test_an_endpoint_that_answers_no_aws_answer_is_a_failed_test_not_a_crash():
    """An endpoint URL (a proxy in front of a VPC endpoint, a test double) answering an empty 403: botocore cannot
    parse it; the test fails with a message naming the endpoint (it was a server error)."""
    from connections.services import connection_test
    from tests.harness.stand_in import Answer, StandIn

    stand_in = StandIn("127.0.0.2", lambda recorded: Answer(403, {"X-Nope": "nope"}, b""))
    stand_in.start()
    try:
        connection = EcrConnectionFactory(credentials="temporary", role_arn="arn:aws:iam::123456789012:role/x",
                                          external_id="ext-id-1234", endpoint_url=stand_in.url)
        result = connection_test(connection)
    finally:
        stand_in.stop()
    assert stand_in.requests  # it was asked
    assert not result.ok and "is not an AWS answer" in result.error
