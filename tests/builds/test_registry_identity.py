"""One registry identity (issue 14, item 8): Docker Hub's aliases, case, URLs and ports mean the same to
login (the Docker config key), events, the anonymous-pull warning and the matching of connections."""

import itertools

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from agent.events import parse_event
from agent.references import docker_config_key, registry_and_repository, registry_identity
from builds.login.services import login_hosts_validate
from builds.operations.selectors import docker_info_summary
from connections.registries import docker_server
from connections.validators import registry_host
from tests.factories import BuildFactory, RegistryConnectionFactory, ingest

HUB_ALIASES = ["", "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com",
               "Index.Docker.IO", "https://index.docker.io/v1/", "https://registry-1.docker.io"]


@pytest.mark.parametrize("alias", HUB_ALIASES)
def test_each_docker_hub_alias_is_docker_hub_with_dockers_own_config_key(alias):
    assert registry_identity(alias) == registry_host(alias) == "docker.io"
    assert docker_config_key(alias) == "https://index.docker.io/v1/"


@pytest.mark.parametrize("address, identity", [
    ("127.0.0.1:5000", "127.0.0.1:5000"), ("Registry.Example.com", "registry.example.com"),
    ("https://Registry.Example.com:5000/some/path", "registry.example.com:5000"),
    ("registry.example.com:443", "registry.example.com:443"),  # Docker keys 'host:443' and 'host' apart
    ("[::1]:5000", "[::1]:5000"), ("ghcr.io", "ghcr.io"),
])
def test_other_registries_are_their_host_and_port_in_lower_case(address, identity):
    assert registry_identity(address) == registry_host(address) == docker_config_key(address) == identity


@pytest.mark.parametrize("alias", [a for a in HUB_ALIASES if "://" not in a and a])
def test_an_image_named_with_any_hub_alias_is_in_docker_hub(alias):
    assert registry_and_repository(f"{alias}/team/app") == ("docker.io", "team/app")
    assert registry_and_repository(f"{alias}/busybox") == ("docker.io", "library/busybox")


def test_a_first_component_in_capitals_is_a_registry_as_for_docker():
    assert registry_and_repository("Registry.Example.com:5000/team/app") == ("registry.example.com:5000", "team/app")
    assert registry_and_repository("LOCALHOST/app") == ("localhost", "app")


@pytest.mark.parametrize("address", ["", "docker.io", "index.docker.io", "registry-1.docker.io",
                                     "registry.hub.docker.com", "https://index.docker.io/"])
@pytest.mark.django_db
def test_a_docker_hub_login_is_keyed_as_docker_does_whatever_its_address(address):
    connection = RegistryConnectionFactory(registry=address)
    assert connection.registry_address == "docker.io"
    assert docker_server(connection) == "https://index.docker.io/v1/"


@pytest.mark.django_db
def test_two_logins_to_docker_hub_under_two_names_are_refused():
    hub, alias = RegistryConnectionFactory(registry="", ident="hub"), RegistryConnectionFactory(
        registry="index.docker.io", ident="hub-alias")
    with pytest.raises(ValidationError, match="both log in to docker.io"):
        login_hosts_validate([hub, alias])


PULLED = ["busybox", "docker.io/library/busybox", "index.docker.io/library/busybox",
          "registry-1.docker.io/library/busybox", "registry.hub.docker.com/library/busybox"]


@pytest.mark.parametrize("logged_in, pulled", list(itertools.product(
    ["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "Docker.IO"], PULLED)))
@pytest.mark.django_db
def test_no_anonymous_pull_warning_for_a_build_logged_in_to_docker_hub_under_another_name(logged_in, pulled):
    build = BuildFactory(started_at=timezone.now(), logged_in_registries=[logged_in])
    ingest(build, [parse_event({"Type": "image", "Action": "pull", "timeNano": 1_790_000_000_000_000_000,
                                "Actor": {"ID": f"{pulled}:1", "Attributes": {"name": pulled}}})])
    assert docker_info_summary(build)["warnings"] == []


@pytest.mark.django_db
def test_a_pull_from_docker_hub_without_its_login_is_still_flagged():
    build = BuildFactory(started_at=timezone.now(), logged_in_registries=["Registry.Example.com:5000"])
    ingest(build, [
        parse_event({"Type": "image", "Action": "pull", "timeNano": 1_790_000_000_000_000_000,
                     "Actor": {"ID": "index.docker.io/library/busybox:1", "Attributes": {}}}),
        parse_event({"Type": "image", "Action": "pull", "timeNano": 1_790_000_000_000_000_001,
                     "Actor": {"ID": "registry.example.com:5000/team/base:1", "Attributes": {}}}),
    ])
    [warning] = docker_info_summary(build)["warnings"]
    assert warning.startswith("index.docker.io/library/busybox:1 was pulled anonymously: the build was not logged "
                              "in to docker.io (anonymous pulls")
