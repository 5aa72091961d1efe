"""The admin shows and changes only what a member's project roles allow; superusers see everything.

team-a (under `org`, with a subproject team-a-web) and team-b: alice administers team-a, bob views
team-b, carol develops team-a-web, dave has no role. A row of a project a member cannot see does not
exist for them; a row they see but may not change is read-only.
"""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from builds.models import PushedImage
from connections.models import Connection, Membership, Project
from tests.factories import BuildConfigurationFactory, BuildFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = pytest.mark.django_db
Role = Membership.Role


@pytest.fixture
def world():
    org = ProjectFactory(ident="org")
    team_a, team_b = ProjectFactory(ident="team-a", parent=org), ProjectFactory(ident="team-b")
    web = ProjectFactory(ident="team-a-web", parent=team_a)
    users = {name: User.objects.create_user(name, password=f"pw-{name}-1")
             for name in ("alice", "bob", "carol", "dave")}
    Membership.objects.create(project=team_a, user=users["alice"], role=Role.ADMIN)
    Membership.objects.create(project=team_b, user=users["bob"], role=Role.VIEWER)
    Membership.objects.create(project=web, user=users["carol"], role=Role.DEVELOPER)
    connections = {name: RegistryConnectionFactory(ident=f"reg-{name}", project=project, registry="127.0.0.1:9")
                   for name, project in (("org", org), ("a", team_a), ("web", web), ("b", team_b))}
    configurations = {name: BuildConfigurationFactory(ident=f"app-{name}", project=project)
                      for name, project in (("a", team_a), ("web", web), ("b", team_b))}
    builds = {name: BuildFactory(configuration=configuration) for name, configuration in configurations.items()}
    images = {name: PushedImage.objects.create(
        project=project, configuration_ident=f"app-{name}", build_number=1, registry="r.test", repository=name,
        tag="1", digest="sha256:1", pushed_at=timezone.now(), cleanup_status="failed", cleanup_reason="HTTP 401")
        for name, project in (("a", team_a), ("b", team_b))}
    return {"projects": {"org": org, "a": team_a, "b": team_b, "web": web}, "users": users,
            "connections": connections, "configurations": configurations, "builds": builds, "images": images}


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def listed(client, model):
    response = client.get(reverse(f"admin:{model}_changelist"))
    assert response.status_code == 200, model
    return {str(getattr(row, "ident", row)) for row in response.context["cl"].result_list}


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def autocomplete(client, app_label, model_name, field_name, term=""):
    response = client.get("/admin/autocomplete/", {"app_label": app_label, "model_name": model_name,
                                                    "field_name": field_name, "term": term})
    assert response.status_code == 200, response.content
    return {item["text"] for item in response.json()["results"]}


def page_data(response):
    """The POST a browser would send back unchanged from an admin change page (form and inlines)."""
    forms, data = [response.context["adminform"].form], {}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        data.update({f"{formset.prefix}-{name}": value for name, value in formset.management_form.initial.items()})
        forms += formset.forms
    for form in forms:
        for name, field in form.fields.items():
            value = form.initial.get(name, field.initial)
            value = value() if callable(value) else value
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else getattr(value, "pk", value)
    return data


def test_lists_hold_only_the_rows_of_projects_the_member_sees(world, login):
    expected = {  # projects, connections, configurations (and so builds), pushed images (by repository)
        "alice": ({"team-a", "team-a-web"}, {"reg-a", "reg-web"}, {"app-a", "app-web"}, {"a"}),
        "bob": ({"team-b"}, {"reg-b"}, {"app-b"}, {"b"}),
        "carol": ({"team-a-web"}, {"reg-web"}, {"app-web"}, set()),
    }
    for name, (projects, connections, configurations, images) in expected.items():
        client = login(world["users"][name])
        assert listed(client, "connections_project") == projects, name
        assert listed(client, "connections_connection") == connections, name
        assert listed(client, "builds_buildconfiguration") == configurations, name
        builds = client.get(reverse("admin:builds_build_changelist")).context["cl"].result_list
        assert {build.configuration.ident for build in builds} == configurations, name
        pushed = client.get(reverse("admin:builds_pushedimage_changelist")).context["cl"].result_list
        assert {image.repository for image in pushed} == images, name


def test_a_superuser_still_sees_everything(world, login):
    client = login(User.objects.create_superuser("root", password="pw-root-1"))
    assert listed(client, "connections_project") == {"org", "team-a", "team-a-web", "team-b"}
    assert listed(client, "connections_connection") == {"reg-org", "reg-a", "reg-web", "reg-b"}
    assert autocomplete(client, "builds", "loginconnection", "connection") == {
        "org/reg-org", "team-a/reg-a", "team-a-web/reg-web", "team-b/reg-b"}


def test_the_index_shows_a_member_only_the_models_they_may_view(world, login):
    client = login(world["users"]["alice"])
    app_list = client.get(reverse("admin:index")).context["app_list"]
    models = {model["object_name"] for app in app_list for model in app["models"]}
    assert {"Project", "Connection", "BuildConfiguration", "Build", "DockerOperation", "PushedImage"} <= models
    assert not {"Agent", "CleanupRun", "User", "Group", "PeriodicTask"} & models
    for url in ("admin:builds_agent_changelist", "admin:builds_cleanuprun_changelist", "admin:auth_user_changelist"):
        assert client.get(reverse(url)).status_code == 403, url


def test_a_row_of_a_project_the_member_cannot_see_does_not_exist_for_them(world, login):
    client = login(world["users"]["alice"])
    for url in (reverse("admin:builds_buildconfiguration_change", args=[world["configurations"]["b"].pk]),
                reverse("admin:connections_connection_change", args=[world["connections"]["b"].pk]),
                reverse("admin:connections_connection_change", args=[world["connections"]["org"].pk]),
                reverse("admin:connections_project_change", args=[world["projects"]["b"].pk]),
                reverse("admin:builds_build_change", args=[world["builds"]["b"].pk]),
                reverse("admin:builds_pushedimage_change", args=[world["images"]["b"].pk])):
        response = client.get(url, follow=True)
        assert response.redirect_chain == [(reverse("admin:index"), 302)], url
        [message] = messages_of(response)
        assert "doesn’t exist" in message, url
    assert client.get(reverse("admin:builds_build_docker_info", args=[world["builds"]["b"].pk])).status_code == 404
    assert client.post(reverse("admin:connections_connection_test", args=[world["connections"]["b"].pk])
                       ).status_code == 404
    # Their own rows open.
    assert client.get(reverse("admin:builds_buildconfiguration_change",
                              args=[world["configurations"]["web"].pk])).status_code == 200


def test_a_viewer_reads_but_changes_nothing(world, login):
    client = login(world["users"]["bob"])
    configuration = world["configurations"]["b"]
    url = reverse("admin:builds_buildconfiguration_change", args=[configuration.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert client.post(url, {"project": configuration.project_id, "ident": "renamed", "name": "x"}).status_code == 403
    configuration.refresh_from_db()
    assert configuration.ident == "app-b"
    for add in ("admin:connections_connection_add", "admin:builds_buildconfiguration_add",
                "admin:connections_project_add"):
        assert client.get(reverse(add)).status_code == 403, add


def test_a_viewers_read_only_connection_page_never_shows_the_secret(world, login):
    connection = world["connections"]["b"]
    page = login(world["users"]["bob"]).get(reverse("admin:connections_connection_change", args=[connection.pk]))
    assert page.status_code == 200 and page.context["has_change_permission"] is False
    assert connection.password.encode() not in page.content
    assert b"stored (write-only)" in page.content


def test_add_forms_offer_only_the_projects_the_member_administers(world, login):
    client = login(world["users"]["alice"])
    for add in ("admin:connections_connection_add", "admin:builds_buildconfiguration_add",
                "admin:connections_project_add"):
        form = client.get(reverse(add)).context["adminform"].form
        field = form.fields["parent" if "project_add" in add else "project"]
        assert {p.ident for p in field.queryset} == {"team-a", "team-a-web"}, add
    response = client.post(reverse("admin:connections_connection_add"), {
        "project": world["projects"]["b"].pk, "ident": "sneaky", "type": "docker-registry", "username": "ci",
        "password": "pw"})
    assert response.status_code == 200
    assert "Select a valid choice" in response.context["adminform"].form.errors["project"][0]
    assert not Connection.objects.filter(ident="sneaky").exists()


def test_a_member_adds_subprojects_only_under_projects_they_administer(world, login):
    client = login(world["users"]["alice"])
    url = reverse("admin:connections_project_add")
    response = client.post(url, {"ident": "top", "name": "Top", **page_data(client.get(url))} | {"parent": ""})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["parent"] == [
        "Choose the parent project (one you administer): only a superuser adds a top-level project."]
    data = page_data(client.get(url)) | {"ident": "team-a-api", "name": "API", "parent": world["projects"]["a"].pk}
    assert client.post(url, data).status_code == 302
    assert Project.objects.get(ident="team-a-api").parent == world["projects"]["a"]
    # team-a's own parent is org, which alice does not administer: she cannot move team-a.
    form = client.get(reverse("admin:connections_project_change", args=[world["projects"]["a"].pk])
                      ).context["adminform"].form
    assert "parent" not in form.fields


def test_autocompletes_offer_only_what_the_member_may_choose(world, login):
    alice = login(world["users"]["alice"])
    # Connections that builds of team-a and team-a-web may use: theirs and their ancestors' (org), not team-b's.
    assert autocomplete(alice, "builds", "loginconnection", "connection") == {
        "org/reg-org", "team-a/reg-a", "team-a-web/reg-web"}
    assert autocomplete(alice, "builds", "loginconnection", "connection", term="reg-b") == set()
    for source in (("connections", "connection", "project"), ("builds", "buildconfiguration", "project"),
                   ("connections", "project", "parent")):
        assert autocomplete(alice, *source) == {"Team-A (team-a)", "Team-A-Web (team-a-web)"}, source
    # A viewer or a developer administers nothing: nothing to choose.
    assert autocomplete(login(world["users"]["bob"]), "builds", "loginconnection", "connection") == set()
    assert autocomplete(login(world["users"]["carol"]), "connections", "connection", "project") == set()


def test_a_login_of_another_teams_connection_is_refused(world, login):
    client = login(world["users"]["alice"])
    configuration = world["configurations"]["a"]
    url = reverse("admin:builds_buildconfiguration_change", args=[configuration.pk])
    data = page_data(client.get(url))
    data.update({"logins-TOTAL_FORMS": "1", "logins-0-connection": world["connections"]["b"].pk,
                 "logins-0-position": "0", "logins-0-configuration": configuration.pk})
    response = client.post(url, data)
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors
    assert "Select a valid choice" in errors[0]["connection"][0]
    assert not configuration.logins.exists()
    data["logins-0-connection"] = world["connections"]["org"].pk  # an ancestor's: usable
    assert client.post(url, data).status_code == 302
    assert [login.connection.ident for login in configuration.logins.all()] == ["reg-org"]


def test_pinning_needs_the_developer_role_on_every_selected_build(world, login):
    builds = world["builds"]
    url = reverse("admin:builds_build_changelist")
    carol = login(world["users"]["carol"])
    carol.post(url, {"action": "pin", "_selected_action": [builds["web"].pk]})
    builds["web"].refresh_from_db()
    assert builds["web"].pinned
    # Seeing team-a's build too, as a viewer: a selection with it changes nothing and says why.
    Membership.objects.create(project=world["projects"]["a"], user=world["users"]["carol"], role=Role.VIEWER)
    response = carol.post(url, {"action": "unpin", "_selected_action": [builds["web"].pk, builds["a"].pk]},
                          follow=True)
    [refusal] = [m for m in messages_of(response) if m.startswith("Nothing done")]
    assert refusal.startswith("Nothing done: you may not unpin") and str(builds["a"]) in refusal
    builds["web"].refresh_from_db()
    assert builds["web"].pinned
    # A viewer is not offered the action, and posting it anyway pins nothing.
    bob = login(world["users"]["bob"])
    assert "pin" not in bob.get(url).context["cl"].model_admin.get_actions(bob.get(url).wsgi_request)
    bob.post(url, {"action": "pin", "_selected_action": [builds["b"].pk]})
    builds["b"].refresh_from_db()
    assert not builds["b"].pinned


def test_the_build_page_is_read_only_but_pinned_for_a_developer(world, login):
    build = world["builds"]["web"]
    url = reverse("admin:builds_build_change", args=[build.pk])
    carol = login(world["users"]["carol"])
    assert list(carol.get(url).context["adminform"].form.fields) == ["pinned"]
    assert carol.post(url, {"pinned": "on", "number": 999}).status_code == 302
    build.refresh_from_db()
    assert build.pinned and build.number != 999
    bob = login(world["users"]["bob"])
    other = world["builds"]["b"]
    other_url = reverse("admin:builds_build_change", args=[other.pk])
    assert bob.get(other_url).context["has_change_permission"] is False
    assert bob.post(other_url, {"pinned": "on"}).status_code == 403


def test_retrying_a_deletion_needs_the_admin_role_on_every_selected_image(world, login,
                                                                          django_capture_on_commit_callbacks):
    images = world["images"]
    url = reverse("admin:builds_pushedimage_changelist")
    Membership.objects.create(project=world["projects"]["b"], user=world["users"]["alice"], role=Role.VIEWER)
    alice = login(world["users"]["alice"])
    response = alice.post(url, {"action": "retry_deletion", "_selected_action": [images["a"].pk, images["b"].pk]},
                          follow=True)
    assert messages_of(response)[0].startswith("Nothing done: you may not retry the deletion of")
    images["a"].refresh_from_db()
    assert images["a"].cleanup_attempts == 0 and images["a"].cleanup_status == "failed"
    with django_capture_on_commit_callbacks(execute=True):
        alice.post(url, {"action": "retry_deletion", "_selected_action": [images["a"].pk]})
    images["a"].refresh_from_db()
    assert images["a"].cleanup_attempts == 1  # retried (and failed again: r.test has no connection)
    bob = login(world["users"]["bob"])
    assert "retry_deletion" not in bob.get(url).context["cl"].model_admin.get_actions(bob.get(url).wsgi_request)


def test_testing_a_connection_needs_the_developer_role(world, login):
    connection = world["connections"]["web"]
    change = reverse("admin:connections_connection_change", args=[connection.pk])
    test = reverse("admin:connections_connection_test", args=[connection.pk])
    carol = login(world["users"]["carol"])
    assert test.encode() in carol.get(change).content
    [message] = messages_of(carol.post(test, follow=True))
    assert "cannot be reached" in message
    other = world["connections"]["b"]
    bob = login(world["users"]["bob"])
    page = bob.get(reverse("admin:connections_connection_change", args=[other.pk]))
    assert page.status_code == 200 and b"test-connection" not in page.content
    assert bob.post(reverse("admin:connections_connection_test", args=[other.pk])).status_code == 403


def test_docker_info_is_shown_to_the_builds_viewers_only(world, login):
    build = world["builds"]["b"]
    url = reverse("admin:builds_build_docker_info", args=[build.pk])
    assert login(world["users"]["bob"]).get(url).status_code == 200
    assert login(world["users"]["carol"]).get(url).status_code == 404


def test_a_projects_admins_edit_its_members(world, login):
    project, dave = world["projects"]["a"], world["users"]["dave"]
    url = reverse("admin:connections_project_change", args=[project.pk])
    alice = login(world["users"]["alice"])
    [members] = [i for i in alice.get(url).context["inline_admin_formsets"] if i.opts.model is Membership]
    assert members.has_add_permission and members.has_change_permission
    data = page_data(alice.get(url))
    data.update({"memberships-TOTAL_FORMS": "2", "memberships-1-user": dave.pk, "memberships-1-role": "viewer",
                 "memberships-1-project": project.pk})
    response = alice.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert Membership.objects.get(project=project, user=dave).role == "viewer"
    assert listed(login(dave), "builds_buildconfiguration") == {"app-a", "app-web"}
    # A viewer sees a project's members but edits none.
    bob = login(world["users"]["bob"])
    team_b_url = reverse("admin:connections_project_change", args=[world["projects"]["b"].pk])
    [members] = [i for i in bob.get(team_b_url).context["inline_admin_formsets"] if i.opts.model is Membership]
    assert not members.has_add_permission and not members.has_change_permission
    assert bob.post(team_b_url, page_data(bob.get(team_b_url))).status_code == 403


def test_a_user_without_a_role_is_refused_at_the_login(world, client):
    response = client.post(reverse("admin:login"), {"username": "dave", "password": "pw-dave-1",
                                                    "next": "/admin/"})
    assert response.status_code == 200 and "Please enter the correct username and password" in response.text
    response = client.post(reverse("admin:login"), {"username": "bob", "password": "pw-bob-1", "next": "/admin/"})
    assert response.status_code == 302 and response.url == "/admin/"


def test_revoking_a_membership_removes_access(world, login):
    alice = login(world["users"]["alice"])
    url = reverse("admin:builds_buildconfiguration_change", args=[world["configurations"]["a"].pk])
    assert alice.get(url).status_code == 200
    Membership.objects.filter(user=world["users"]["alice"]).delete()
    response = alice.get(url)
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
