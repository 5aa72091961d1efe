"""Each validation rule of connections and projects, and the message it gives."""

import pytest
from django.core.exceptions import ValidationError

from connections.models import Connection
from connections.validators import registry_host
from tests.factories import EcrConnectionFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db


def errors_of(obj) -> dict:
    with pytest.raises(ValidationError) as info:
        obj.full_clean()
    return info.value.message_dict


@pytest.mark.parametrize("address", ["", "127.0.0.1:5000", "registry.example.com", "ghcr.io",
                                      "https://registry.example.com", "http://127.0.0.1:5000/", "[::1]:5000",
                                      "my-registry.internal:443"])
def test_registry_address_forms_are_accepted(address):
    RegistryConnectionFactory.build(project=ProjectFactory(), registry=address).full_clean()


@pytest.mark.parametrize("address, message", [
    ("ftp://registry.example.com", "a URL must start with http:// or https://"),
    ("registry.example.com/team/app", "without a repository path"),
    ("bad host:5000", "expected host[:port] or a URL"),
    ("registry.example.com:99999", "port 99999 is out of range"),
    ("https://user:pw@registry.example.com", "must not carry credentials"),
    ("-bad.example.com", "expected host[:port] or a URL"),
])
def test_bad_registry_addresses_are_refused_with_the_reason(address, message):
    errors = errors_of(RegistryConnectionFactory.build(project=ProjectFactory(), registry=address))
    assert message in errors["registry"][0]


@pytest.mark.parametrize("address, host", [
    ("", "docker.io"), ("127.0.0.1:5000", "127.0.0.1:5000"), ("https://Registry.Example.com/", "registry.example.com"),
    ("http://127.0.0.1:5000", "127.0.0.1:5000"),
])
def test_registry_host_is_derived_from_the_address(address, host):
    assert registry_host(address) == host


def test_empty_registry_address_means_docker_hub():
    connection = RegistryConnectionFactory.build(project=ProjectFactory(), registry="")
    assert connection.registry_address == "docker.io"
    assert connection.is_docker_hub


def test_docker_registry_needs_username_and_password():
    errors = errors_of(RegistryConnectionFactory.build(project=ProjectFactory(), username="", password=""))
    assert errors["username"] == ["a Docker registry connection needs a username"]
    assert errors["password"] == ["a Docker registry connection needs a password or access token"]


def test_docker_registry_refuses_ecr_fields():
    errors = errors_of(RegistryConnectionFactory.build(project=ProjectFactory(), region="eu-west-1"))
    assert errors["region"] == ["only Amazon ECR connections use this field"]


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-2", "ap-southeast-1", "us-gov-west-1", "cn-north-1",
                                     "il-central-1"])
def test_aws_region_names_are_accepted(region):
    EcrConnectionFactory.build(project=ProjectFactory(), region=region).full_clean()


@pytest.mark.parametrize("region", ["", "europe", "EU-WEST-1", "eu-west", "eu_west_1", "mars-1"])
def test_bad_aws_regions_are_refused(region):
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), region=region))
    assert "is not an AWS region name (like eu-west-1 or us-east-2)" in errors["region"][0]


@pytest.mark.parametrize("arn", ["arn:aws:iam::12:role/x", "arn:aws:iam::123456789012:user/ci",
                                 "arn:aws:s3:::bucket", "role/ci-push"])
def test_bad_role_arns_are_refused(arn):
    connection = EcrConnectionFactory.build(
        project=ProjectFactory(), credentials=Connection.Credentials.TEMPORARY, role_arn=arn,
    )
    assert "is not an IAM role ARN" in errors_of(connection)["role_arn"][0]


def test_role_arn_with_path_is_accepted():
    EcrConnectionFactory.build(
        project=ProjectFactory(), credentials=Connection.Credentials.TEMPORARY,
        role_arn="arn:aws:iam::123456789012:role/ci/ci-push", external_id="ext-1",
    ).full_clean()


@pytest.mark.parametrize("registry_id", ["12345678901", "1234567890123", "12345678901a"])
def test_registry_id_must_be_12_digits(registry_id):
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), registry_id=registry_id))
    assert "an AWS account ID is exactly 12 digits" in errors["registry_id"][0]


def test_ecr_registry_address_is_derived():
    connection = EcrConnectionFactory.build(region="eu-west-1", registry_id="123456789012")
    assert connection.registry_address == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def test_access_keys_need_both_keys():
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), access_key_id="", secret_access_key=""))
    assert errors["access_key_id"] == ["credentials type access-keys needs an access key ID"]
    assert errors["secret_access_key"] == ["credentials type access-keys needs a secret access key"]


def test_temporary_credentials_need_a_role_arn():
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), credentials="temporary"))
    assert errors["role_arn"] == ["temporary credentials need the IAM role ARN to assume"]


def test_default_chain_takes_no_keys():
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), credentials="default-chain"))
    assert "takes no keys" in errors["access_key_id"][0]
    EcrConnectionFactory.build(
        project=ProjectFactory(), credentials="default-chain", access_key_id="", secret_access_key="",
    ).full_clean()


def test_role_arn_only_with_temporary_credentials():
    errors = errors_of(EcrConnectionFactory.build(
        project=ProjectFactory(), role_arn="arn:aws:iam::123456789012:role/ci",
    ))
    assert errors["role_arn"] == ["only temporary credentials (AssumeRole) use this field"]


def test_ecr_needs_registry_id_and_credentials_type():
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), registry_id="", credentials=""))
    assert "needs the registry ID" in errors["registry_id"][0]
    assert errors["credentials"] == ["choose access-keys, temporary or default-chain"]


def test_ecr_refuses_docker_registry_fields():
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), username="ci"))
    assert errors["username"] == ["only Docker registry connections use this field"]


@pytest.mark.parametrize("url", ["127.0.0.1:5055", "ftp://x", "http://"])
def test_endpoint_url_must_be_http_url(url):
    errors = errors_of(EcrConnectionFactory.build(project=ProjectFactory(), endpoint_url=url))
    assert "is not an endpoint URL" in errors["endpoint_url"][0]


@pytest.mark.parametrize("ident", ["Acme", "acme web", "-acme", "acme-", ""])
def test_identifiers_are_lowercase_slugs(ident):
    errors = errors_of(ProjectFactory.build(ident=ident, name="x"))
    assert "id" in errors["ident"][0] or "blank" in errors["ident"][0]


def test_connection_id_is_unique_within_its_project_only():
    first = RegistryConnectionFactory(ident="hub")
    RegistryConnectionFactory(ident="hub")  # another project: fine
    errors = errors_of(RegistryConnectionFactory.build(project=first.project, ident="hub"))
    assert "__all__" in errors


def test_a_project_cannot_become_its_own_ancestor():
    root = ProjectFactory(ident="root")
    child = ProjectFactory(ident="child", parent=root)
    root.parent = child
    assert errors_of(root)["parent"] == ["a project cannot be its own ancestor"]
