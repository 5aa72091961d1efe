"""Rules the models enforce whatever writes them: connection boundaries, agent defaults."""

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from builds.models import Agent, LoginConnection, default_data_path
from tests.factories import AgentFactory, BuildConfigurationFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db


def test_a_configuration_may_log_in_with_its_projects_and_ancestors_connections():
    root = ProjectFactory(ident="root")
    child = ProjectFactory(ident="child", parent=root)
    configuration = BuildConfigurationFactory(project=child)
    for owner in (child, root):
        LoginConnection.objects.create(configuration=configuration, connection=RegistryConnectionFactory(project=owner))
    assert configuration.logins.count() == 2


@pytest.mark.parametrize("owner", ["sibling", "child", "unrelated"])
def test_a_configuration_never_logs_in_with_another_projects_connection(owner):
    root = ProjectFactory(ident="root")
    project = ProjectFactory(ident="project", parent=root)
    others = {
        "sibling": ProjectFactory(ident="sibling", parent=root),
        "child": ProjectFactory(ident="child", parent=project),
        "unrelated": ProjectFactory(ident="unrelated"),
    }
    connection = RegistryConnectionFactory(project=others[owner], ident="theirs")
    configuration = BuildConfigurationFactory(project=project)
    with pytest.raises(ValidationError) as info, transaction.atomic():
        LoginConnection.objects.create(configuration=configuration, connection=connection)
    assert info.value.message_dict["connection"] == [
        f"connection '{owner}/theirs' belongs to project '{owner}', which is neither 'project' nor one of its ancestors"
    ]
    assert not LoginConnection.objects.exists()


def test_agent_queue_is_named_after_the_agent():
    assert AgentFactory.build(name="builder-7").queue_name == "agent.builder-7"


@pytest.mark.parametrize("os_name, expected", [("linux", "/var/lib/docker"), ("windows", "C:\\ProgramData")])
def test_data_path_defaults_per_os(os_name, expected, settings, monkeypatch):
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = ""
    monkeypatch.delenv("ProgramData", raising=False)
    assert Agent(name="a", os=os_name).effective_data_path == expected


@pytest.mark.parametrize("os_name", ["macos", "other"])
def test_data_path_defaults_to_home_elsewhere(os_name, settings, monkeypatch, tmp_path):
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = ""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Agent(name="a", os=os_name).effective_data_path == str(tmp_path)


def test_windows_default_follows_programdata(settings, monkeypatch):
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = ""
    monkeypatch.setenv("ProgramData", "D:\\ProgramData")
    assert default_data_path("windows") == "D:\\ProgramData"


def test_data_path_overrides(settings):
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = "/srv/docker"
    assert Agent(name="a", os="linux").effective_data_path == "/srv/docker"
    assert Agent(name="a", os="linux", docker_data_path="/data/docker").effective_data_path == "/data/docker"


def test_admin_refuses_another_projects_connection_and_two_logins_to_one_host(admin_client):
    from django.urls import reverse

    project = ProjectFactory(ident="project")
    configuration = BuildConfigurationFactory(project=project, ident="app", name="App")
    own = RegistryConnectionFactory(project=project, ident="own", registry="127.0.0.1:5000")
    same_host = RegistryConnectionFactory(project=project, ident="same-host", registry="http://127.0.0.1:5000")
    foreign = RegistryConnectionFactory(project=ProjectFactory(ident="other"), ident="foreign")
    url = reverse("admin:builds_buildconfiguration_change", args=[configuration.pk])

    def post(*connections):
        data = {"project": project.pk, "ident": "app", "name": "App",
                "logins-TOTAL_FORMS": len(connections), "logins-INITIAL_FORMS": 0}
        for i, connection in enumerate(connections):
            data.update({f"logins-{i}-connection": connection.pk, f"logins-{i}-position": i,
                         f"logins-{i}-configuration": configuration.pk})
        return admin_client.post(url, data)

    response = post(foreign)
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.errors == [{"connection": [
        "connection 'other/foreign' belongs to project 'other', which is neither 'project' nor one of its ancestors"
    ]}]
    response = post(own, same_host)
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.non_form_errors() == ["connections 'own' and 'same-host' both log in to 127.0.0.1:5000; "
                                         "a Docker config holds one credential per registry host"]
    assert not LoginConnection.objects.exists()
    assert post(own).status_code == 302
    assert [login.connection for login in configuration.logins.all()] == [own]


@pytest.mark.parametrize("text, size", [("500M", 500 * 1024 ** 2), ("20G", 20 * 1024 ** 3), ("1T", 1024 ** 4),
                                        ("1.5G", int(1.5 * 1024 ** 3)), ("2048", 2048), ("10k", 10 * 1024),
                                        ("3GiB", 3 * 1024 ** 3)])
def test_sizes_are_read_with_binary_units(text, size):
    from builds.agent_cleanup import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "5X", "-1G", "1,5G"])
def test_a_bad_size_names_itself(text):
    from builds.agent_cleanup import AgentCleanupError, parse_size

    with pytest.raises(AgentCleanupError, match="is not a size"):
        parse_size(text)


def test_the_data_path_says_where_it_comes_from(settings):
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = ""
    assert Agent(name="a", os="linux").data_path_and_origin()[1].startswith("the default for Linux")
    settings.DOCKERSUPPORT_DOCKER_DATA_PATH = "/srv/docker"
    assert Agent(name="a").data_path_and_origin() == ("/srv/docker", "DOCKERSUPPORT_DOCKER_DATA_PATH")
    assert Agent(name="a", docker_data_path="/d").data_path_and_origin() == ("/d", "the 'Docker data path' of agent a")
