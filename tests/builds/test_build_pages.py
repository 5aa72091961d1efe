"""The build's read-only page, its Docker Info tab (images by name, empty states that say why) and the lists of
builds and operations, for a superuser and for the project's members by role."""

from datetime import timedelta

import pytest
from django.contrib import messages
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from agent.events import parse_event
from builds.models import Agent, Build, PushedImage
from connections.models import Membership, Project
from tests.factories import BuildConfigurationFactory, BuildFactory, LoginConnectionFactory, ProjectFactory, ingest

pytestmark = pytest.mark.django_db
T0 = 1_790_000_000_000_000_000
IMAGE_ID = "sha256:" + "b3f5" * 16
Role = Membership.Role


def event(kind, action, actor, seconds, **attributes):
    return parse_event({"Type": kind, "Action": action, "timeNano": T0 + int(seconds * 1e9),
                        "Actor": {"ID": actor, "Attributes": attributes}})


@pytest.fixture
def team():
    """Project `org` with subproject `team`; a configuration of `team` logging in to a registry of `team`
    (required) and to one of `org` (optional); viewer vic and developer dev on `team`."""
    org = ProjectFactory(ident="org")
    project = ProjectFactory(ident="team", parent=org)
    configuration = BuildConfigurationFactory(ident="app", project=project)
    required = LoginConnectionFactory(configuration=configuration, connection__ident="local",
                                      connection__registry="registry.team.test:5000").connection
    optional = LoginConnectionFactory(configuration=configuration, connection__project=org, connection__ident="hub",
                                      connection__registry="", optional=True, position=1).connection
    users = {name: User.objects.create_user(name, password=f"pw-{name}-1") for name in ("vic", "dev")}
    Membership.objects.create(project=project, user=users["vic"], role=Role.VIEWER)
    Membership.objects.create(project=project, user=users["dev"], role=Role.DEVELOPER)
    return {"project": project, "configuration": configuration, "required": required, "optional": optional,
            **users}


def finished_build(team, **fields):
    started = timezone.now() - timedelta(minutes=3)
    hub_failure = "login with connection 'org/hub' to docker.io failed: unauthorized: incorrect username or password"
    values = {"configuration": team["configuration"], "number": 7, "status": Build.Status.FAILED, "exit_code": 3,
              "started_at": started, "finished_at": started + timedelta(seconds=125),
              "logged_in_registries": ["registry.team.test:5000"], "warnings": [hub_failure],
              "docker_config": "/var/lib/dockersupport/configs/app-7", **fields}
    return BuildFactory(**values)


def page(client, name, build, **query):
    response = client.get(reverse(f"admin:builds_build_{name}", args=[build.pk]), query)
    assert response.status_code == 200, response.content[:500]
    return response, response.content.decode()


def test_the_build_page_reads_as_a_build_not_a_form(admin_client, team):
    build = finished_build(team)
    response, html = page(admin_client, "change", build)
    assert "<h1>Build app #7</h1>" in html and "Change build" not in html
    assert 'class="submit-row"' not in html and 'name="_save"' not in html and "<input type=\"checkbox\"" not in html
    assert '<span class="ds-badge ds-badge-failed">Failed · exit 3</span>' in html
    assert '<strong id="build-duration">2m 05s</strong>' in html
    # Linked both ways: its configuration (and its builds), its project, its agent, its Docker Info.
    for url in (reverse("admin:builds_buildconfiguration_change", args=[team["configuration"].pk]),
                reverse("admin:connections_project_change", args=[team["project"].pk]),
                reverse("admin:builds_agent_change", args=[build.agent_id]),
                reverse("admin:builds_build_changelist") + f"?configuration__id__exact={team['configuration'].pk}",
                reverse("admin:builds_build_docker_info", args=[build.pk])):
        assert f'href="{url}"' in html, url
    # The warnings as a list of warnings, not JSON.
    assert '<li class="warning">login with connection &#x27;org/hub&#x27; to docker.io failed' in html
    assert '["login' not in html


def test_the_build_page_lists_the_registries_it_logged_in_to(admin_client, team):
    build = finished_build(team)
    _, html = page(admin_client, "change", build)
    logins = html.split('id="build-logins"')[1].split("</table>")[0]
    local, hub = logins.split("<tr class=")[1:]
    assert "registry.team.test:5000" in local and "required" in local
    assert f'href="{reverse("admin:connections_connection_change", args=[team["required"].pk])}"' in local
    assert '<span class="ds-badge ds-badge-ok">logged in</span>' in local
    assert "docker.io" in hub and "optional" in hub and '<span class="ds-badge ds-badge-failed">failed</span>' in hub
    assert "incorrect username or password" in hub
    for secret in (team["required"].password, team["optional"].password):
        assert secret not in html


def test_a_member_sees_only_what_their_role_allows_on_the_build_page(client, team):
    build = finished_build(team)
    client.force_login(team["vic"])
    _, html = page(client, "change", build)
    logins = html.split('id="build-logins"')[1].split("</table>")[0]
    # Their project's connection is linked; org's is not theirs to see, nor is the agent (superusers').
    assert reverse("admin:connections_connection_change", args=[team["required"].pk]) in logins
    assert reverse("admin:connections_connection_change", args=[team["optional"].pk]) not in logins
    assert "org/hub" in logins
    assert reverse("admin:builds_agent_change", args=[build.agent_id]) not in html and str(build.agent) in html
    # A viewer reads but does not pin: no button, and posting is refused.
    assert 'id="build-pin"' not in html
    pin = reverse("admin:builds_build_pin", args=[build.pk])
    assert client.post(pin, {"pinned": "1"}).status_code == 403
    build.refresh_from_db()
    assert not build.pinned


def test_a_developer_pins_and_unpins_with_the_page_button(client, team):
    build = finished_build(team)
    client.force_login(team["dev"])
    _, html = page(client, "change", build)
    assert '<button type="submit" class="button" id="build-pin">Pin</button>' in html
    assert 'class="submit-row"' not in html
    response = client.post(reverse("admin:builds_build_pin", args=[build.pk]), {"pinned": "1"}, follow=True)
    assert response.redirect_chain == [(reverse("admin:builds_build_change", args=[build.pk]), 302)]
    assert [str(m) for m in response.context["messages"]] == ["Build app #7 pinned: retention never deletes it."]
    assert Build.objects.get(pk=build.pk).pinned
    assert ">Unpin</button>" in response.content.decode()
    client.post(reverse("admin:builds_build_pin", args=[build.pk]), {"pinned": "0"})
    assert not Build.objects.get(pk=build.pk).pinned
    assert client.get(reverse("admin:builds_build_pin", args=[build.pk])).status_code == 405


def test_a_build_of_a_project_the_member_cannot_see_cannot_be_pinned(client, team):
    other = BuildFactory(configuration=BuildConfigurationFactory(project=ProjectFactory(ident="elsewhere")))
    client.force_login(team["dev"])
    assert client.post(reverse("admin:builds_build_pin", args=[other.pk]), {"pinned": "1"}).status_code == 404
    assert not Build.objects.get(pk=other.pk).pinned


def test_containers_show_the_image_by_name_and_ids_stay_whole(admin_client, team):
    build = finished_build(team)
    ingest(build, [
        event("image", "pull", "busybox:1", 0, name="busybox"),
        event("image", "tag", IMAGE_ID, 0.5, name="busybox:1"),
        event("container", "create", "c" * 64, 1, name="from-id", image=IMAGE_ID),
        event("container", "start", "c" * 64, 1.5, name="from-id", image=IMAGE_ID),
        event("container", "die", "c" * 64, 3.5, name="from-id", image=IMAGE_ID, exitCode="2"),
        event("container", "start", "d" * 64, 4, name="short-id", image="b3f5b3f5b3f5"),
        event("container", "die", "d" * 64, 5, name="short-id", image="b3f5b3f5b3f5", exitCode="0"),
        event("container", "start", "e" * 64, 6, name="unknown", image="sha256:" + "9" * 64),
        event("container", "die", "e" * 64, 7, name="unknown", image="sha256:" + "9" * 64, exitCode="0"),
    ])
    response, html = page(admin_client, "docker_info", build)
    containers = {c["name"]: c for c in response.context["containers"]}
    assert (containers["from-id"]["image"], containers["from-id"]["image_id"]) == ("busybox:1", IMAGE_ID)
    assert containers["from-id"]["seconds"] == 2.0 and containers["from-id"]["failed"]
    assert containers["short-id"]["image"] == "busybox:1"
    assert containers["unknown"]["image"] == "sha256:" + "9" * 64  # no name known: the whole ID
    # In the operations, an image ID is one value, never image "sha256" with a 64-character tag.
    operations = html.split('id="docker-info-operations"')[1]
    assert f'title="{IMAGE_ID}">busybox:1</span>' in operations
    assert ">sha256<" not in operations and f">{'b3f5' * 16}<" not in operations
    # The images it pulled, with their ID where the build's operations named it.
    images = response.context["images"]
    assert images == [{"action": "pull", "reference": "busybox:1", "digest": "", "image_id": IMAGE_ID}]


def test_a_pull_by_digest_shows_its_digest(admin_client, team):
    build = finished_build(team)
    digest = "sha256:" + "a1" * 32
    ingest(build, [event("image", "pull", f"busybox@{digest}", 0, name="busybox")])
    response, html = page(admin_client, "docker_info", build)
    assert response.context["images"][0]["digest"] == digest
    assert f'title="{digest}">{digest}</span>' in html.split('id="docker-info-images"')[1]


def test_the_build_time_and_container_run_times_are_shown(admin_client, team):
    build = finished_build(team)
    ingest(build, [event("container", "start", "c" * 64, 1, name="runner", image="busybox:1"),
                   event("container", "die", "c" * 64, 3.25, name="runner", image="busybox:1", exitCode="0")])
    _, html = page(admin_client, "docker_info", build)
    assert '<span class="ds-number">2m 05s</span> build time' in html
    assert "<td>2.25 s</td>" in html


def test_pushed_images_of_a_live_build_read_retained_and_statuses_are_badges(admin_client, team):
    build = finished_build(team, status=Build.Status.RUNNING, exit_code=None, finished_at=None)
    ingest(build, [event("image", "push", "registry.team.test:5000/app:1", 1, name="registry.team.test:5000/app")])
    image = PushedImage.objects.get(build=build)
    assert image.cleanup_status == "kept"  # the stored value stays
    _, html = page(admin_client, "docker_info", build)
    pushed = html.split('id="docker-info-pushed"')[1].split("</table>")[0]
    assert '<span class="ds-badge ds-badge-neutral">retained</span>' in pushed and "Kept" not in pushed
    assert '<span class="ds-badge ds-badge-running">Running</span>' in html
    _, html = page(admin_client, "change", build)
    assert '<span class="ds-badge ds-badge-neutral">retained</span>' in html
    # Once its build is deleted, clean-up's own decision shows, coloured.
    PushedImage.objects.filter(pk=image.pk).update(build=None, cleanup_status="failed", cleanup_reason="HTTP 401")
    image.refresh_from_db()
    from builds.admin.builds import cleanup_status_badge
    assert 'class="ds-badge ds-badge-failed">Deletion failed</span>' in cleanup_status_badge(image)


def test_the_docker_info_of_a_build_whose_login_failed_says_so(admin_client, client, team):
    error = ("login with connection 'team/local' to registry.team.test:5000 failed: "
             "Get \"https://registry.team.test:5000/v2/\": unauthorized")
    build = finished_build(team, status=Build.Status.ERROR, exit_code=None, error=error, logged_in_registries=[],
                           warnings=[], docker_config="")
    client.force_login(team["vic"])
    for who in (admin_client, client):
        response, html = page(who, "docker_info", build)
        empty = html.split('id="docker-info-empty"')[1].split("</div>")[0]
        assert "A registry login failed, so the build&#x27;s command never ran." in empty
        assert "unauthorized" in empty
        assert 'id="docker-info-summary"' not in html  # no cards of zeros
    _, html = page(admin_client, "change", build)
    assert "The build did not run:</strong> login with connection" in html
    logins = html.split('id="build-logins"')[1].split("</table>")[0]
    assert '<span class="ds-badge ds-badge-failed">failed</span>' in logins
    assert '<span class="ds-badge ds-badge-neutral">not used</span>' in logins


def test_the_docker_info_of_a_build_whose_daemon_did_not_answer_says_so(admin_client, team):
    error = "the Docker daemon at unix:///var/run/docker.sock does not answer: connection refused"
    build = finished_build(team, status=Build.Status.ERROR, exit_code=None, error=error, logged_in_registries=[],
                           warnings=[])
    _, html = page(admin_client, "docker_info", build)
    assert "The agent&#x27;s Docker daemon could not be reached, so the build&#x27;s command never ran." in html
    assert "connection refused" in html


def test_the_docker_info_of_a_running_build_with_nothing_yet_says_so(client, team):
    build = finished_build(team, status=Build.Status.RUNNING, exit_code=None, finished_at=None,
                           started_at=timezone.now())
    client.force_login(team["vic"])
    _, html = page(client, "docker_info", build)
    assert "The build is running and has recorded no Docker operation yet" in html
    assert '<span class="ds-badge ds-badge-running">Running</span>' in html
    # Its agent's daemon stops answering: that is why nothing comes.
    daemon_error = "the Docker daemon at tcp://10.1.2.3:2376 does not answer: connection refused"
    Agent.objects.filter(pk=build.agent_id).update(daemon_ok=False, daemon_error=daemon_error)
    _, html = page(client, "docker_info", build)
    assert f"Agent {build.agent}&#x27;s Docker daemon does not answer" in html
    assert "10.1.2.3" not in html  # the agent's own error (its Docker endpoint) is for those who see agents
    client.force_login(User.objects.create_superuser("root", password="pw-root-1"))
    _, html = page(client, "docker_info", build)
    assert "tcp://10.1.2.3:2376 does not answer" in html


def test_the_docker_info_of_a_finished_build_without_docker_says_so(admin_client, team):
    build = finished_build(team, status=Build.Status.SUCCEEDED, exit_code=0, warnings=[])
    _, html = page(admin_client, "docker_info", build)
    assert "The build finished without any Docker operation" in html


def test_the_builds_list_shows_statuses_as_badges_for_a_member(client, team):
    finished_build(team)
    finished_build(team, number=8, status=Build.Status.RUNNING, exit_code=None, finished_at=None)
    client.force_login(team["vic"])
    html = client.get(reverse("admin:builds_build_changelist")).content.decode()
    assert '<span class="ds-badge ds-badge-failed">failed · exit 3</span>' in html
    assert '<span class="ds-badge ds-badge-running">running</span>' in html
    assert "<th" in html and "column-configuration" not in html and "column-exit_code" not in html


def test_the_operations_list_joins_image_and_tag_and_colours_exit_codes(client, team):
    build = finished_build(team)
    ingest(build, [event("container", "die", "c" * 64, 1, name="failing", image=IMAGE_ID, exitCode="3"),
                   event("image", "pull", "busybox:1", 0, name="busybox")])
    client.force_login(team["vic"])
    html = client.get(reverse("admin:builds_dockeroperation_changelist")).content.decode()
    assert f'title="{IMAGE_ID}">{IMAGE_ID}</span>' in html and 'title="busybox:1">busybox:1</span>' in html
    assert '<span class="ds-badge ds-badge-failed">3</span>' in html
    assert "column-tag" not in html


@pytest.mark.parametrize("statuses, level", [(("pending",), messages.INFO), (("pending", "failed"), messages.WARNING)])
def test_the_deleted_builds_banner_warns_when_a_deletion_failed(admin_client, statuses, level):
    project = Project.objects.create(ident="p", name="P")
    for status in statuses:
        PushedImage.objects.create(project=project, configuration_ident="c", build_number=1, registry="r.test",
                                   repository="a", tag=status, pushed_at=timezone.now(), cleanup_status=status)
    [message] = admin_client.get(reverse("admin:builds_build_changelist")).context["messages"]
    assert message.level == level and str(message).startswith("Images of deleted builds:")
