"""What the server sends where: credentials go only to the registry's own host or an https token
service, never through redirects, never to cloud-metadata addresses; other hosts' answers are not
quoted. Hostile registries are stand-ins on other loopback addresses that record what they get."""

import base64

import pytest
from django.core.exceptions import ValidationError

from connections import validators
from connections.registries import ForbiddenDestination, RegistryError
from connections.registries.v2 import QUOTE_LIMIT, RegistrySession
from connections.services import connection_test
from tests.factories import EcrConnectionFactory, RegistryConnectionFactory
from tests.harness.stand_in import Answer, StandIn

PASSWORD = "outbound-secret-4711"
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="registry"'}


def basic(username="ci", password=PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def other_host():
    """Another host: it answers 500 with an internal address in its body, and records everything."""
    with StandIn("127.0.0.3", lambda r: Answer(500, body=b"internal service at 10.20.30.40 is down")) as server:
        yield server


def never_received_credentials(server: StandIn) -> bool:
    return not any(PASSWORD in r.path or "Authorization" in r.headers for r in server.requests)


def test_a_realm_on_another_host_over_plain_http_gets_no_credentials(other_host):
    challenge = {"WWW-Authenticate": f'Bearer realm="{other_host.url}/token",service="evil"'}
    with StandIn("127.0.0.2", lambda r: Answer(401, challenge)) as registry:
        session = RegistrySession(registry.address, "ci", PASSWORD)
        with pytest.raises(RegistryError, match="credentials are sent to another host only over https"):
            session.check_login()
    assert other_host.requests == []


def test_a_realm_on_the_registrys_own_host_is_used():
    def script(request):
        if request.path.startswith("/token"):
            ok = request.headers.get("Authorization") == basic()
            return Answer(200, body=b'{"token": "tok-1"}') if ok else Answer(401)
        if request.headers.get("Authorization") == "Bearer tok-1":
            return Answer(200)
        return Answer(401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.2:{registry.port}/token"'})

    with StandIn("127.0.0.2", script) as registry:
        verified = RegistrySession(registry.address, "ci", PASSWORD).check_login()
    assert "credentials of 'ci' accepted" in verified


def test_a_redirect_never_carries_credentials_and_another_hosts_answer_is_not_quoted(other_host):
    def script(request):
        if "Authorization" in request.headers:
            return Answer(307, {"Location": f"{other_host.url}/v2/"})
        return Answer(401, BASIC_CHALLENGE)

    with StandIn("127.0.0.2", script) as registry:
        with pytest.raises(RegistryError) as failure:
            RegistrySession(registry.address, "ci", PASSWORD).check_login()
        assert registry.authorizations() == [basic()]  # the registry's own host got them, once
    assert [r.path for r in other_host.requests] == ["/v2/"]  # followed, but without credentials
    assert never_received_credentials(other_host)
    assert "HTTP 500" in str(failure.value)
    assert "10.20.30.40" not in str(failure.value)


def test_the_registrys_own_answer_is_quoted_but_cut_short():
    body = b'{"errors": [{"code": "DENIED", "message": "' + b"x" * 5000 + b'"}]}'
    with StandIn("127.0.0.2", lambda r: Answer(401, BASIC_CHALLENGE, body)) as registry:
        with pytest.raises(RegistryError) as failure:
            RegistrySession(registry.address, "ci", PASSWORD).check_login()
    text = str(failure.value)
    assert "DENIED" in text
    assert len(text) < QUOTE_LIMIT + 200


def test_a_delete_that_is_redirected_is_not_a_deletion(other_host):
    def script(request):
        if "Authorization" not in request.headers:
            return Answer(401, BASIC_CHALLENGE)
        return Answer(307, {"Location": f"{other_host.url}/elsewhere"})

    with StandIn("127.0.0.2", script) as registry:
        session = RegistrySession(registry.address, "ci", PASSWORD)
        with pytest.raises(RegistryError, match="HTTP 307"):
            session.delete_manifest("app", "sha256:" + "a" * 64)
    assert other_host.requests == []


def test_a_tag_list_page_link_is_always_asked_of_the_registry(other_host):
    def script(request):
        if "Authorization" not in request.headers:
            return Answer(401, BASIC_CHALLENGE)
        if "last=1" in request.path:
            return Answer(200, body=b'{"tags": ["2"]}')
        return Answer(200, {"Link": f'<{other_host.url}/v2/app/tags/list?last=1>; rel="next"'}, b'{"tags": ["1"]}')

    with StandIn("127.0.0.2", script) as registry:
        assert RegistrySession(registry.address, "ci", PASSWORD).tags("app") == ["1", "2"]
    assert other_host.requests == []


def test_a_host_name_that_resolves_to_a_forbidden_address_is_refused_at_connect(monkeypatch):
    import ipaddress

    with StandIn("127.0.0.1", lambda r: Answer(401, BASIC_CHALLENGE)) as registry:
        # Make loopback "forbidden" for this test: `localhost` is a name, so only the connect-time
        # check of the peer address can catch it (as it catches a name resolving to 169.254.169.254).
        monkeypatch.setattr(validators, "FORBIDDEN_NETWORKS", [ipaddress.ip_network("127.0.0.0/8"),
                                                               ipaddress.ip_network("::1/128")])
        session = RegistrySession(f"localhost:{registry.port}", "ci", PASSWORD)
        with pytest.raises(ForbiddenDestination, match="link-local or cloud-metadata"):
            session.check_login()
    assert registry.requests == []


@pytest.mark.parametrize("address", [
    "169.254.169.254", "169.254.169.254:80", "http://169.254.169.254/", "[fe80::1]:5000", "[fd00:ec2::254]",
    "[::ffff:169.254.169.254]",
])
def test_cloud_metadata_addresses_are_refused_as_registry_addresses(address):
    with pytest.raises(ValidationError, match="DOCKERSUPPORT_ALLOW_LINK_LOCAL"):
        validators.validate_registry_address(address)


@pytest.mark.parametrize("url", ["http://169.254.169.254", "https://[fd00:ec2::254]:443", "http://[fe80::a%25lo]"])
def test_cloud_metadata_addresses_are_refused_as_endpoints(url):
    with pytest.raises(ValidationError, match="link-local or cloud-metadata"):
        validators.validate_endpoint_url(url)


def test_a_documented_setting_allows_link_local_addresses(settings):
    settings.DOCKERSUPPORT_ALLOW_LINK_LOCAL = True
    validators.validate_registry_address("169.254.10.10:5000")
    validators.validate_endpoint_url("http://169.254.169.254")


def test_a_token_realm_at_a_metadata_address_is_refused():
    challenge = {"WWW-Authenticate": 'Bearer realm="https://169.254.169.254/latest/meta-data/"'}
    with StandIn("127.0.0.2", lambda r: Answer(401, challenge)) as registry:
        with pytest.raises(ForbiddenDestination):
            RegistrySession(registry.address, "ci", PASSWORD).check_login()


def test_an_ecr_endpoint_resolving_to_a_forbidden_address_is_refused(db, monkeypatch):
    import ipaddress

    monkeypatch.setattr(validators, "FORBIDDEN_NETWORKS", [ipaddress.ip_network("127.0.0.0/8"),
                                                           ipaddress.ip_network("::1/128")])
    with StandIn("127.0.0.1", lambda r: Answer(500)) as endpoint:
        connection = EcrConnectionFactory.build(endpoint_url=f"http://localhost:{endpoint.port}")
        result = connection_test(connection)
    assert not result.ok
    assert "link-local or cloud-metadata" in result.error
    assert endpoint.requests == []


def test_a_connection_test_reaches_only_the_saved_address(db, other_host):
    """The test button tests what is stored: its secrets go to the stored address, nowhere else."""
    with StandIn("127.0.0.2", lambda r: Answer(200 if "Authorization" in r.headers else 401, BASIC_CHALLENGE)) as reg:
        connection = RegistryConnectionFactory(registry=reg.address, password=PASSWORD)
        connection.registry = other_host.address  # an unsaved change is not what is tested...
        with pytest.raises(ValidationError, match="give the password again"):
            connection.save()  # ...and cannot be saved without the password
        connection.refresh_from_db()
        assert connection_test(connection).ok
    assert reg.authorizations() == [basic()]
    assert other_host.requests == []


@pytest.mark.parametrize("realm", [
    "http://{other}\\\\@127.0.0.2/token",  # parsers disagree on the host: one reads 127.0.0.2, requests the other
    "http://127.0.0.2@{other}/token",
    "https://user:pw@{other}/token",
    "http://127.0.0.2 @{other}/token",
])
def test_an_ambiguous_realm_gets_no_credentials(other_host, realm):
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm.format(other=other_host.address)}",service="x"'}
    with StandIn("127.0.0.2", lambda r: Answer(401, challenge)) as registry:
        with pytest.raises(RegistryError):
            RegistrySession(registry.address, "ci", PASSWORD).check_login()
    assert other_host.requests == []


def test_a_long_realm_is_not_quoted_whole():
    realm = "http://elsewhere.example.test/" + "x" * 20_000
    with StandIn("127.0.0.2", lambda r: Answer(401, {"WWW-Authenticate": f'Bearer realm="{realm}"'})) as registry:
        with pytest.raises(RegistryError) as failure:
            RegistrySession(registry.address, "ci", PASSWORD).check_login()
    assert len(str(failure.value)) < QUOTE_LIMIT + 200


@pytest.mark.parametrize("address", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518"])
def test_numeric_forms_of_a_metadata_address_are_refused(address):
    with pytest.raises(ValidationError, match="link-local or cloud-metadata"):
        validators.validate_registry_address(address)


@pytest.mark.parametrize("field, value", [
    ("registry", "evil.example.test"), ("endpoint_url", "http://evil.example.test"),
])
def test_the_default_chain_sends_the_servers_tokens_to_aws_hosts_only(db, field, value):
    connection = EcrConnectionFactory.build(credentials="default-chain", access_key_id="", secret_access_key="",
                                            **{field: value})
    with pytest.raises(ValidationError) as refused:
        connection.full_clean()
    assert "DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST" in refused.value.message_dict[field][0]
    result = connection_test(connection)  # a row written around the validation is refused at use too
    assert not result.ok and "not an AWS host name" in result.error


def test_the_default_chain_takes_aws_hosts(db):
    connection = EcrConnectionFactory.build(
        credentials="default-chain", access_key_id="", secret_access_key="",
        registry="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        endpoint_url="https://vpce-1a2b.api.ecr.eu-west-1.vpce.amazonaws.com")
    connection.full_clean(exclude=["project"])


def test_an_endpoints_page_is_not_quoted_in_the_error(db):
    page = b"<html>INTERNAL ADMIN PAGE: db password hunter2</html>"
    with StandIn("127.0.0.2", lambda r: Answer(403, {"Content-Type": "text/html"}, page)) as endpoint:
        connection = EcrConnectionFactory.build(endpoint_url=endpoint.url)
        result = connection_test(connection)
    assert not result.ok and "HTTP 403" in result.error
    assert "hunter2" not in result.error and "INTERNAL" not in result.error
