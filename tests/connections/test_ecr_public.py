"""Amazon ECR Public connections (repository type public): the token from ecr-public in us-east-1 whatever the
connection's region, a build's login to public.ecr.aws, the connection test, and registry clean-up through
ecr-public's BatchDeleteImage — against tests/harness/ecr_public.py, which checks every request's SigV4."""

import logging

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.utils import timezone

from agent.references import ECR_PUBLIC, docker_config_key, registry_and_repository, registry_identity
from builds.cleanup.registry import pending_deletions_process
from builds.login.services import build_credentials, login_hosts_validate
from builds.models import PushedImage
from connections.models import Connection
from connections.registries import credentials_for, docker_server
from connections.registries.ecr import cache_key
from connections.services import connection_test
from tests.factories import (
    BuildConfigurationFactory,
    BuildFactory,
    EcrConnectionFactory,
    LoginConnectionFactory,
    ProjectFactory,
)
from tests.harness.ecr_public import EcrPublicStandIn

pytestmark = pytest.mark.django_db
KEY_ID, SECRET = "AKIAPUBLICEXAMPLE001", "ecr-public-secret-key-5d2e9a"
OTHER_ID, OTHER_SECRET = "AKIAPUBLICEXAMPLE002", "ecr-public-other-key-77c1"
ROLE = "arn:aws:iam::123456789012:role/ci-push"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def aws():
    with EcrPublicStandIn(keys={KEY_ID: SECRET, OTHER_ID: OTHER_SECRET}) as stand_in:
        yield stand_in


def public(aws, **fields):
    values = {"repository_type": "public", "region": "eu-central-1", "registry_id": "", "access_key_id": KEY_ID,
              "secret_access_key": SECRET, "endpoint_url": aws.url, **fields}
    return EcrConnectionFactory(**values)


# --- Registry identity ---------------------------------------------------------------------------


def test_public_ecr_aws_is_a_registry_of_its_own_named_as_docker_names_it():
    assert registry_and_repository("public.ecr.aws/team/app") == (ECR_PUBLIC, "team/app")
    assert registry_identity("https://PUBLIC.ECR.AWS/") == ECR_PUBLIC == docker_config_key("public.ecr.aws")
    private = EcrConnectionFactory.build(region="us-east-1")
    assert private.registry_address == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert EcrConnectionFactory.build(repository_type="public").registry_address == ECR_PUBLIC


def test_a_public_connection_logs_in_to_public_ecr_aws_alone(aws):
    connection = public(aws)
    assert (connection.registry_address, docker_server(connection)) == (ECR_PUBLIC, ECR_PUBLIC)
    with pytest.raises(ValidationError) as info:
        login_hosts_validate([connection, public(aws, ident="second")])
    assert "both log in to public.ecr.aws" in info.value.messages[0]


# --- Validation ----------------------------------------------------------------------------------


def test_a_public_connection_takes_no_registry_address_and_needs_no_registry_id():
    connection = EcrConnectionFactory.build(project=ProjectFactory(), repository_type="public", registry_id="",
                                            registry="other.example.test")
    with pytest.raises(ValidationError) as info:
        connection.full_clean()
    assert info.value.message_dict == {"registry": [
        "an Amazon ECR Public connection logs in to public.ecr.aws only: leave the registry address empty"]}


def test_a_private_connection_naming_public_ecr_aws_is_told_to_choose_public():
    connection = EcrConnectionFactory.build(project=ProjectFactory(), registry="public.ecr.aws")
    with pytest.raises(ValidationError) as info:
        connection.full_clean()
    [message] = info.value.message_dict["registry"]
    assert "public.ecr.aws is Amazon ECR Public: choose repository type public" in message


def test_a_bad_repository_type_and_one_on_a_docker_registry_name_the_field():
    with pytest.raises(ValidationError) as info:
        EcrConnectionFactory.build(project=ProjectFactory(), repository_type="protected").full_clean()
    assert "repository_type" in info.value.message_dict
    docker = Connection(project=ProjectFactory(), ident="hub", username="u", password="p", repository_type="public")
    with pytest.raises(ValidationError) as info:
        docker.full_clean()
    assert info.value.message_dict["repository_type"] == [
        "only Amazon ECR connections have a repository type: leave it private"]


def test_switching_to_public_needs_the_secret_again(aws):
    connection = EcrConnectionFactory(endpoint_url=aws.url)
    connection.repository_type, connection.registry_id = "public", ""
    with pytest.raises(ValidationError) as info:
        connection.save()
    assert "repository type" in info.value.message_dict["secret_access_key"][0]
    connection.secrets_given = frozenset({"secret_access_key"})
    connection.save()


# --- The token -----------------------------------------------------------------------------------


def test_a_builds_login_gets_the_ecr_public_token_for_public_ecr_aws(aws):
    connection = public(aws)
    configuration = BuildConfigurationFactory(project=connection.project)
    LoginConnectionFactory(configuration=configuration, connection=connection)
    [login] = build_credentials(BuildFactory(configuration=configuration))
    assert not login.error
    assert (login.registry, login.server, login.username, login.password) == (ECR_PUBLIC, ECR_PUBLIC, "AWS", aws.token)
    assert login.expires_at > timezone.now()
    [call] = aws.calls
    assert (call["target"], call["region"], call["service"], call["body"]) == (
        "GetAuthorizationToken", "us-east-1", "ecr-public", {})


def test_the_token_comes_from_us_east_1_whatever_the_region_and_sts_asks_in_the_connections(aws):
    connection = public(aws, region="ap-southeast-2", credentials="temporary", role_arn=ROLE, external_id="ext-4b1")
    credentials = credentials_for(connection, session_name="dockersupport-app-3")
    [assumed] = aws.assumed
    assert (assumed["RoleArn"], assumed["ExternalId"], assumed["RoleSessionName"], assumed["region"]) == (
        ROLE, "ext-4b1", "dockersupport-app-3", "ap-southeast-2")
    assert assumed["caller"] == KEY_ID
    [call] = aws.calls  # signed by the assumed role's keys, in us-east-1
    assert call["region"] == "us-east-1" and call["access_key"].startswith("ASIA")
    assert credentials.password == aws.token
    assert "assumed role arn:aws:sts::123456789012:assumed-role/ci-push/dockersupport-app-3" in credentials.detail


def test_the_default_chain_gives_a_public_token(aws, monkeypatch, settings):
    settings.DOCKERSUPPORT_DEFAULT_CHAIN_ANY_HOST = True  # the stand-in is no AWS host
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OTHER_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OTHER_SECRET)
    connection = public(aws, credentials="default-chain", access_key_id="", secret_access_key="")
    assert credentials_for(connection).password == aws.token
    assert aws.calls[0]["access_key"] == OTHER_ID


def test_the_token_is_cached_apart_from_a_private_ones_and_per_secret(aws):
    connection = public(aws)
    credentials_for(connection)
    credentials_for(connection)
    assert aws.targets() == ["GetAuthorizationToken"]  # the second came from the cache
    private = EcrConnectionFactory.build(pk=connection.pk, access_key_id=KEY_ID, secret_access_key=SECRET,
                                         region=connection.region, endpoint_url=aws.url, registry_id="")
    other_secret = EcrConnectionFactory.build(pk=connection.pk, repository_type="public", access_key_id=KEY_ID,
                                              secret_access_key="another", region=connection.region,
                                              endpoint_url=aws.url, registry_id="")
    assert len({cache_key(connection), cache_key(private), cache_key(other_secret)}) == 3
    assert SECRET not in cache_key(connection)


# --- The connection test -------------------------------------------------------------------------


def test_the_connection_test_gets_the_public_token(aws):
    connection = public(aws)
    result = connection_test(connection)
    assert result.ok, result.error
    [line] = result.verified
    assert line.startswith("token for public.ecr.aws (ecr-public, us-east-1) expires ")
    assert aws.targets() == ["GetAuthorizationToken"]


def test_the_connection_test_shows_ecr_publics_refusal_exactly_without_the_secret(aws, caplog):
    caplog.set_level(logging.DEBUG)
    connection = public(aws, secret_access_key="a-wrong-secret-key-31f0")
    result = connection_test(connection)
    assert not result.ok
    # Not an AWS host: only the code and HTTP status are quoted (the body of another host is never shown).
    assert result.error == (f"connection '{connection}': AWS GetAuthorizationToken failed: "
                            "InvalidSignatureException: HTTP 403")
    assert "a-wrong-secret-key-31f0" not in caplog.text + result.as_text()
    assert not aws.calls  # refused before any action


def test_an_unknown_key_is_refused_with_aws_words(aws):
    result = connection_test(public(aws, access_key_id="AKIANOBODYKNOWSTHIS1"))
    assert "AWS GetAuthorizationToken failed: UnrecognizedClientException: HTTP 400" in result.error


# --- Clean-up ------------------------------------------------------------------------------------


def tombstone(project, repository, tag, digest, **fields):
    return PushedImage.objects.create(
        project=project, configuration_ident="gone", build_number=fields.pop("build_number", 1), registry=ECR_PUBLIC,
        repository=repository, tag=tag, digest=digest, pushed_at=timezone.now(), cleanup_status="pending",
        next_attempt_at=timezone.now(), **fields)


def test_clean_up_deletes_a_public_image_with_batch_delete_image_by_digest(aws, caplog):
    caplog.set_level(logging.DEBUG)
    connection = public(aws, registry_id="123456789012")
    aws.push("app", D1, "build-1")
    image = tombstone(connection.project, "team/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert image.cleanup_reason == f"image deleted, with connection {connection}"
    delete = next(call for call in aws.calls if call["target"] == "BatchDeleteImage")
    assert delete["body"] == {"registryId": "123456789012", "repositoryName": "app", "imageIds": [{"imageDigest": D1}]}
    assert {call["region"] for call in aws.calls} == {"us-east-1"}
    assert aws.deleted == [{"imageDigest": D1}] and aws.repositories["app"] == {}
    assert SECRET not in caplog.text and aws.token not in caplog.text


def test_without_a_registry_id_none_is_sent(aws):
    connection = public(aws)
    aws.push("app", D1, "build-1")
    tombstone(connection.project, "team/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    assert all("registryId" not in call["body"] for call in aws.calls)


def test_a_tag_not_pushed_by_a_deleted_build_keeps_the_image_and_only_the_builds_tag_goes(aws):
    connection = public(aws)
    aws.push("app", D1, "build-1", "stable")
    image = tombstone(connection.project, "team/app", "build-1", D1)
    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert "only tag 'build-1' was removed: tag(s) stable still point to the digest" in image.cleanup_reason
    assert aws.repositories["app"] == {D1: {"stable"}}


def test_a_protected_tag_and_a_kept_builds_digest_are_never_sent_to_aws(aws, settings):
    settings.DOCKERSUPPORT_PROTECTED_TAGS = "release-*"
    connection = public(aws)
    aws.push("app", D1, "release-1")
    aws.push("app", D2, "build-2")
    protected = tombstone(connection.project, "team/app", "release-1", D1)
    configuration = BuildConfigurationFactory(project=connection.project)
    tombstone(connection.project, "team/app", "build-2", D2)
    PushedImage.objects.create(project=connection.project, build=BuildFactory(configuration=configuration),
                               configuration_ident=configuration.ident, build_number=2, registry=ECR_PUBLIC,
                               repository="team/app", tag="build-2", digest=D2, pushed_at=timezone.now())
    assert pending_deletions_process() == {"kept": 2}
    protected.refresh_from_db()
    assert "protected" in protected.cleanup_reason
    assert "BatchDeleteImage" not in aws.targets()
    assert aws.repositories["app"] == {D1: {"release-1"}, D2: {"build-2"}}


def test_another_registrys_alias_is_refused_and_nothing_is_deleted(aws):
    connection = public(aws)
    aws.push("app", D1, "build-1")  # the same name in this registry: not the image that was pushed
    image = tombstone(connection.project, "stranger/app", "build-1", D1)
    assert pending_deletions_process() == {"failed": 1}
    image.refresh_from_db()
    assert "'stranger' is not an alias of this connection's ECR Public registry (its aliases: team)" in (
        image.cleanup_reason)
    assert "BatchDeleteImage" not in aws.targets() and aws.repositories["app"] == {D1: {"build-1"}}


def test_a_connection_ecr_public_refuses_hands_the_image_to_the_next(aws):
    parent = ProjectFactory(ident="org")
    child = ProjectFactory(ident="team", parent=parent)
    refused = public(aws, project=child, ident="reader")
    allowed = public(aws, project=parent, ident="pusher", access_key_id=OTHER_ID, secret_access_key=OTHER_SECRET)
    aws.denied[KEY_ID] = {"BatchDeleteImage"}
    aws.push("app", D1, "build-1")
    image = tombstone(child, "team/app", "build-1", D1, connection=refused)
    assert pending_deletions_process() == {"deleted": 1}
    image.refresh_from_db()
    assert f"with connection {allowed}" in image.cleanup_reason
    assert f"refused before: connection {refused}: AWS BatchDeleteImage failed: AccessDeniedException" in (
        image.cleanup_reason)


# --- Settings file, export, admin ----------------------------------------------------------------

PUBLIC_FILE = """
projects:
  - id: acme
    connections:
      - id: gallery
        type: amazon-ecr
        repository_type: {kind}
        region: eu-central-1
        credentials: access-keys
        access_key_id: AKIAPUBLICEXAMPLE001
        secret_access_key: ${{ECR_PUBLIC_SECRET}}
      - id: private
        type: amazon-ecr
        region: eu-west-1
        credentials: default-chain
        registry_id: "123456789012"
"""


def test_the_settings_file_applies_and_exports_the_repository_type(monkeypatch):
    from builds.settings_file import apply_settings, export_settings, parse_settings

    monkeypatch.setenv("ECR_PUBLIC_SECRET", SECRET)
    apply_settings(parse_settings(PUBLIC_FILE.format(kind="public")))
    gallery = Connection.objects.get(ident="gallery")
    assert (gallery.repository_type, gallery.registry_address) == ("public", ECR_PUBLIC)
    assert Connection.objects.get(ident="private").repository_type == "private"  # absent: private
    exported = export_settings()
    [entry, private] = exported["projects"][0]["connections"]
    assert entry["repository_type"] == "public" and private["repository_type"] == "private"
    assert "secret_access_key" not in entry and SECRET not in str(exported)
    report = apply_settings(exported)  # round trip: the secret stays, nothing changes
    assert (report.unchanged["connection"], report.updated["connection"]) == (2, 0)
    assert Connection.objects.get(ident="gallery").secret_access_key == SECRET


def test_a_bad_repository_type_in_the_settings_file_is_named_and_changes_nothing(monkeypatch):
    from builds.settings_file import SettingsFileError, apply_settings, parse_settings

    monkeypatch.setenv("ECR_PUBLIC_SECRET", SECRET)
    with pytest.raises(SettingsFileError) as info:
        apply_settings(parse_settings(PUBLIC_FILE.format(kind="protected")))
    assert info.value.errors == [
        "projects[0].connections[0].repository_type: 'protected' is not a repository type (private, public)"]
    assert not Connection.objects.exists()


def test_a_docker_registry_in_the_settings_file_takes_no_repository_type():
    from builds.settings_file import SettingsFileError, apply_settings, parse_settings

    text = ("projects:\n  - id: acme\n    connections:\n      - {id: hub, type: docker-registry, username: u, "
            "password: p, repository_type: public}\n")
    with pytest.raises(SettingsFileError) as info:
        apply_settings(parse_settings(text))
    assert "projects[0].connections[0].repository_type: docker-registry connections do not take this key" in (
        info.value.errors)


def admin_form(connection, **changes):
    data = {name: getattr(connection, name) or "" for name in (
        "ident", "name", "type", "registry", "username", "region", "credentials", "access_key_id", "role_arn",
        "registry_id", "endpoint_url", "repository_type")}
    data.update(project=connection.project_id, password="", secret_access_key="", external_id="")
    data.update(changes)
    return data


def test_the_admin_form_shows_the_repository_type_in_ecrs_fieldset_with_its_help(admin_client):
    from django.urls import reverse

    page = admin_client.get(reverse("admin:connections_connection_add")).content.decode()
    ecr = page.split('ds-type-amazon-ecr"', 1)[1].split("</fieldset>", 1)[0]
    docker = page.split('ds-type-docker-registry"', 1)[1].split("</fieldset>", 1)[0]
    assert 'name="repository_type"' in ecr and 'name="repository_type"' not in docker
    assert "its token always comes from ecr-public in us-east-1" in ecr


def test_the_admin_saves_a_public_connection_and_names_a_bad_type(admin_client, aws):
    from django.urls import reverse

    connection = EcrConnectionFactory(endpoint_url=aws.url, access_key_id=KEY_ID)
    url = reverse("admin:connections_connection_change", args=[connection.pk])
    refused = admin_client.post(url, admin_form(connection, repository_type="public", registry_id=""))
    assert "give the secret access key again" in str(refused.context["adminform"].form.errors)
    response = admin_client.post(url, admin_form(connection, repository_type="public", registry_id="",
                                                 secret_access_key=SECRET))
    assert response.status_code == 302, response.context["adminform"].form.errors
    connection.refresh_from_db()
    assert connection.is_ecr_public and connection.secret_access_key == SECRET
    bad = admin_client.post(url, admin_form(connection, repository_type="protected"))
    assert "protected is not one of the available choices" in str(bad.context["adminform"].form.errors[
        "repository_type"])
    page = admin_client.get(url).content.decode()
    assert "Images are named with:" in page and ECR_PUBLIC in page and SECRET not in page


def test_the_admins_test_button_says_what_ecr_public_verified(admin_client, aws):
    from django.urls import reverse

    connection = public(aws)
    answer = admin_client.post(reverse("admin:connections_connection_test", args=[connection.pk]),
                               HTTP_ACCEPT="application/json").json()
    assert answer["ok"] and answer["title"].startswith(
        "✓ Amazon ECR Public accepted the credentials: ecr-public (us-east-1) gave a token for public.ecr.aws")
    assert SECRET not in str(answer) and aws.token not in str(answer)
