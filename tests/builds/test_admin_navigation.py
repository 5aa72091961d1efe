"""Links both ways between projects, subprojects, connections, configurations and builds, each shown only to
those whose role lets them see it; the login list offers only the connections its configuration may use.

The world of tests/connections/test_admin_roles.py: org > team-a > team-a-web, and team-b; alice administers
team-a, bob views team-b, carol develops team-a-web; each project has a connection reg-<name>.
"""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from builds.models import Build
from connections.models import Connection
from tests.connections import test_admin_roles
from tests.connections.test_admin_roles import autocomplete, page_data
from tests.factories import BuildFactory, LoginConnectionFactory

pytestmark = pytest.mark.django_db
world, login = test_admin_roles.world, test_admin_roles.login  # the same fixtures


def links(response):
    """The Links box of a change page: label → its HTML."""
    assert response.status_code == 200
    return {label: str(value) for label, value in response.context["related_links"]}


def change(model, obj):
    return reverse(f"admin:{model}_change", args=[obj.pk])


@pytest.fixture
def root(db):
    return User.objects.create_superuser("root", password="pw-root-1")


def test_a_project_links_to_its_subprojects_configurations_and_inherited_connections(world, login, root):
    projects, connections = world["projects"], world["connections"]
    box = links(login(root).get(change("connections_project", projects["a"])))
    assert f'href="{change("connections_project", projects["web"])}">Team-A-Web (team-a-web)</a>' in box[
        "Subprojects"]
    assert f'href="{reverse("admin:connections_project_add")}?parent={projects["a"].pk}"' in box["Subprojects"]
    usable = box["Connections its builds may use"]
    assert usable.startswith("1 of its own")
    assert f'href="{change("connections_connection", connections["org"])}">org/reg-org</a> (127.0.0.1:9) — ' \
           f'inherited from <a href="{change("connections_project", projects["org"])}">Org (org)</a>' in usable
    assert "reg-web" not in usable and "reg-b" not in usable  # a subproject's or another team's: not usable here
    assert f'{reverse("admin:connections_connection_add")}?project={projects["a"].pk}' in usable
    configurations = box["Build configurations"]
    assert f'href="{change("builds_buildconfiguration", world["configurations"]["a"])}">app-a</a>' in configurations
    assert f'{reverse("admin:builds_buildconfiguration_add")}?project={projects["a"].pk}' in configurations
    assert box["Parent"] == f'<a href="{change("connections_project", projects["org"])}">Org (org)</a>'


def test_a_member_sees_only_links_their_role_allows(world, login):
    projects = world["projects"]
    alice = login(world["users"]["alice"])
    box = links(alice.get(change("connections_project", projects["a"])))
    assert box["Parent"] == "Org (org)"  # named (her form shows it), not linked: she does not see org
    usable = box["Connections its builds may use"]
    assert "reg-org" not in usable and "(and 1 in projects you do not see)" in usable
    assert "Add a connection" in usable and "Add a subproject" in box["Subprojects"]
    # The prefilled add pages choose the project.
    form = alice.get(reverse("admin:connections_connection_add"), {"project": projects["web"].pk}).context[
        "adminform"].form
    assert form.initial["project"] == str(projects["web"].pk)
    # A developer of team-a-web reads its page; adds nothing there.
    box = links(login(world["users"]["carol"]).get(change("connections_project", projects["web"])))
    assert "Add a" not in "".join(box.values())
    assert "(and 2 in projects you do not see)" in box["Connections its builds may use"]


def test_a_connection_links_to_its_project_and_the_configurations_logging_in_with_it(world, login, root):
    configurations, connections = world["configurations"], world["connections"]
    LoginConnectionFactory(configuration=configurations["web"], connection=connections["a"], optional=True)
    LoginConnectionFactory(configuration=configurations["a"], connection=connections["a"])
    box = links(login(root).get(change("connections_connection", connections["a"])))
    assert box["Project"] == f'<a href="{change("connections_project", world["projects"]["a"])}">Team-A (team-a)</a>'
    used = box["Build configurations logging in with it"]
    assert used.index(">app-a</a> (project team-a)") < used.index(">app-web</a> (project team-a-web, optional)")
    # carol sees team-a's connection? No: she is a developer of team-a-web only.
    carol = login(world["users"]["carol"])
    assert carol.get(change("connections_connection", connections["a"])).status_code == 302
    box = links(login(world["users"]["alice"]).get(change("connections_connection", connections["a"])))
    assert ">app-web</a>" in box["Build configurations logging in with it"]


def test_a_configuration_links_to_its_builds_project_and_connections(world, login):
    configuration, connections = world["configurations"]["web"], world["connections"]
    for status in (Build.Status.RUNNING, Build.Status.FAILED, Build.Status.SUCCEEDED):  # and the world's running one
        BuildFactory(configuration=configuration, status=status)
    LoginConnectionFactory(configuration=configuration, connection=connections["org"])
    LoginConnectionFactory(configuration=configuration, connection=connections["web"], optional=True)
    builds = reverse("admin:builds_build_changelist") + f"?configuration__id__exact={configuration.pk}"
    box = links(login(world["users"]["carol"]).get(change("builds_buildconfiguration", configuration)))
    assert box["Builds"] == (f'<a href="{builds}">4 builds</a> (<a href="{builds}&amp;status__exact=running">2 '
                             'running</a>, 1 failed, in error or lost)')
    assert box["Project"].endswith(">Team-A-Web (team-a-web)</a>")
    logins = box["Logs in with"]
    assert f'href="{change("connections_connection", connections["web"])}">team-a-web/reg-web</a> (127.0.0.1:9, ' \
           'optional)' in logins
    assert "reg-org" not in logins and "(and 1 in projects you do not see)" in logins
    # The builds link lists exactly that configuration's builds.
    listed = login(world["users"]["carol"]).get(builds).context["cl"].result_list
    assert {build.configuration_id for build in listed} == {configuration.pk} and len(listed) == 4


def test_the_login_autocomplete_offers_only_what_the_configurations_project_may_use(world, login, root):
    projects = world["projects"]
    alice = login(world["users"]["alice"])

    def offered(client, project):
        response = client.get("/admin/autocomplete/", {"app_label": "builds", "model_name": "loginconnection",
                                                       "field_name": "connection", "usable_by": project.pk})
        assert response.status_code == 200
        return {item["text"] for item in response.json()["results"]}

    # Without a project (an add page before one is chosen): those of every project she administers.
    assert autocomplete(alice, "builds", "loginconnection", "connection") == {
        "org/reg-org", "team-a/reg-a", "team-a-web/reg-web"}
    assert offered(alice, projects["a"]) == {"org/reg-org", "team-a/reg-a"}
    assert offered(alice, projects["web"]) == {"org/reg-org", "team-a/reg-a", "team-a-web/reg-web"}
    assert offered(alice, projects["b"]) == set()  # never more than she may choose
    assert offered(login(root), projects["b"]) == {"team-b/reg-b"}
    assert offered(login(root), projects["a"]) == {"org/reg-org", "team-a/reg-a"}


def test_every_login_choice_the_configuration_page_offers_is_saved(world, login, root):
    for user in (world["users"]["alice"], root):
        client = login(user)
        configuration = world["configurations"]["a"]
        url = change("builds_buildconfiguration", configuration)
        page = client.get(url)
        [logins] = [i for i in page.context["inline_admin_formsets"] if i.opts.model.__name__ == "LoginConnection"]
        choices = logins.formset.empty_form.fields["connection"].queryset
        assert {c.ident for c in choices} == {"reg-org", "reg-a"}, user
        for connection in choices:
            data = page_data(client.get(url)) | {"logins-TOTAL_FORMS": "1", "logins-0-connection": connection.pk,
                                                 "logins-0-position": "0", "logins-0-configuration": configuration.pk}
            assert client.post(url, data).status_code == 302, (user, connection)
            assert [login.connection for login in configuration.logins.all()] == [connection]
            configuration.logins.all().delete()
        # A subproject's connection is not offered, and refused if posted.
        data = page_data(client.get(url)) | {"logins-TOTAL_FORMS": "1", "logins-0-position": "0",
                                             "logins-0-connection": world["connections"]["web"].pk,
                                             "logins-0-configuration": configuration.pk}
        response = client.post(url, data)
        assert response.status_code == 200 and not configuration.logins.exists()


def test_the_login_list_follows_the_project_chosen_on_the_add_page(world, login):
    alice = login(world["users"]["alice"])
    url = reverse("admin:builds_buildconfiguration_add")
    connections = world["connections"]
    data = page_data(alice.get(url)) | {"project": world["projects"]["a"].pk, "ident": "new-app", "name": "New",
                                        "logins-TOTAL_FORMS": "1", "logins-0-position": "0",
                                        "logins-0-connection": connections["web"].pk}
    response = alice.post(url, data)
    assert response.status_code == 200  # team-a-web's connection is not team-a's to use
    assert alice.post(url, data | {"logins-0-connection": connections["org"].pk}).status_code == 302
    page = alice.get(url, {"project": world["projects"]["a"].pk})
    [logins] = [i for i in page.context["inline_admin_formsets"] if i.opts.model.__name__ == "LoginConnection"]
    assert {c.ident for c in logins.formset.empty_form.fields["connection"].queryset} == {"reg-org", "reg-a"}
    assert 'data-usable-by="%d"' % world["projects"]["a"].pk in page.content.decode()


def test_the_login_list_comes_right_after_docker_support(world, login):
    page = login(world["users"]["alice"]).get(change("builds_buildconfiguration", world["configurations"]["a"]))
    content = page.content.decode()
    assert [fieldset.name for fieldset in page.context["adminform"]][-1] == "Docker Support"
    assert "Docker Support: registry logins" in content
    assert content.index(">Docker Support<") < content.index("Docker Support: registry logins")
    assert "connections/usable_by.js" in content


def test_the_configurations_list_shows_builds_and_retention_in_few_columns(world, login):
    configuration = world["configurations"]["a"]
    configuration.keep_last, configuration.keep_days, configuration.cleanup_pushed_images = 10, 30, True
    configuration.save()
    response = login(world["users"]["alice"]).get(reverse("admin:builds_buildconfiguration_changelist"))
    content = response.content.decode()
    assert "keeps last 10 builds or 30 days; deletes pushed images" in content
    assert f'?configuration__id__exact={configuration.pk}">1</a>' in content
    assert len(response.context["cl"].list_display) <= 6
    assert Connection.objects.count() == 4
