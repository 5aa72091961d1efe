"""Rules the models enforce whatever writes them: connection boundaries, agent defaults."""

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from builds.models import LoginConnection
from tests.factories import BuildConfigurationFactory, ProjectFactory, RegistryConnectionFactory

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


@pytest.mark.parametrize("system, expected", [("Linux", "/var/lib/docker"), ("Windows", "C:\\ProgramData")])
def test_data_path_defaults_per_os(system, expected, monkeypatch):
    from agent import cleanup

    monkeypatch.setattr(cleanup.platform, "system", lambda: system)
    monkeypatch.delenv("ProgramData", raising=False)
    assert cleanup.default_data_path() == expected


@pytest.mark.parametrize("system", ["Darwin", "FreeBSD"])
def test_data_path_defaults_to_home_elsewhere(system, monkeypatch, tmp_path):
    from agent import cleanup

    monkeypatch.setattr(cleanup.platform, "system", lambda: system)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cleanup.default_data_path() == str(tmp_path)


def test_windows_default_follows_programdata(monkeypatch):
    from agent import cleanup

    monkeypatch.setattr(cleanup.platform, "system", lambda: "Windows")
    monkeypatch.setenv("ProgramData", "D:\\ProgramData")
    assert cleanup.default_data_path() == "D:\\ProgramData"


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
    # The form offers only the configuration's project's and ancestors' connections (the model's own check,
    # with its message naming both projects, is tested above).
    assert formset.errors == [{"connection": [
        "Select a valid choice. That choice is not one of the available choices."]}]
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
    from builds.cleanup.agent import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "5X", "-1G", "1,5G"])
def test_a_bad_size_names_itself(text):
    from builds.cleanup.agent import AgentCleanupError, parse_size

    with pytest.raises(AgentCleanupError, match="is not a size"):
        parse_size(text)


def test_the_data_path_says_where_it_comes_from():
    from agent.cleanup import data_path

    assert data_path("", "")[1].startswith("the default for Linux")
    assert data_path("", "/srv/docker") == ("/srv/docker", "DOCKERSUPPORT_DOCKER_DATA_PATH")
    assert data_path("/d", "/srv/docker") == ("/d", "the agent's 'Docker data path' in the admin")
