"""The admin index: an overview of what needs an eye (as far as the user's roles go), the server clean-up buttons,
our apps first and celery-beat's internals out of the way; the agent page's free-space chart."""

import hashlib
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from builds.models import Agent, AgentCleanup, Build, CleanupRun, PushedImage
from connections.models import Membership
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory, ProjectFactory

pytestmark = pytest.mark.django_db
GiB = 1024 ** 3
SVG = "{http://www.w3.org/2000/svg}"


def image(project, name, status, build=None, registry="r.test"):
    return PushedImage.objects.create(
        project=project, build=build, configuration_ident=build.configuration.ident if build else "gone",
        build_number=build.number if build else 1, registry=registry, repository=name, tag="1",
        digest="sha256:" + hashlib.sha256(name.encode()).hexdigest(), pushed_at=timezone.now(), cleanup_status=status)


@pytest.fixture
def world():
    """team-a: 2 running builds, 2 recent failures (one lost), an old failure, images of deleted builds 2 pending
    and 1 failed; team-b: 1 running, 1 recent error, 3 pending. viewer views team-a, other views team-b."""
    now = timezone.now()
    a, b = ProjectFactory(ident="team-a"), ProjectFactory(ident="team-b")
    app_a = BuildConfigurationFactory(ident="app-a", project=a)
    app_b = BuildConfigurationFactory(ident="app-b", project=b)
    runner = AgentFactory(name="runner")
    builds = {name: BuildFactory(configuration=app_a if name.startswith("a") else app_b, agent=runner, **fields)
              for name, fields in (
                  ("a-run-1", {}), ("a-run-2", {}),
                  ("a-failed", {"status": "failed", "finished_at": now - timedelta(hours=1)}),
                  ("a-lost", {"status": "lost", "finished_at": now - timedelta(hours=2)}),
                  ("a-old", {"status": "failed", "finished_at": now - timedelta(hours=30)}),
                  ("a-ok", {"status": "succeeded", "finished_at": now}),
                  ("b-run", {}),
                  ("b-error", {"status": "error", "finished_at": now - timedelta(hours=1)}))}
    for name, status in (("a1", "pending"), ("a2", "pending"), ("a3", "failed"), ("a4", "deleted")):
        image(a, name, status)
    Agent.objects.filter(pk=runner.pk).update(last_seen_at=now)
    for name in ("b1", "b2", "b3"):
        image(b, name, "pending")
    users = {"root": User.objects.create_superuser("root", password="pw-root-1"),
             "viewer": User.objects.create_user("viewer", password="pw-viewer-1"),
             "other": User.objects.create_user("other", password="pw-other-1")}
    Membership.objects.create(project=a, user=users["viewer"], role=Membership.Role.VIEWER)
    Membership.objects.create(project=b, user=users["other"], role=Membership.Role.VIEWER)
    return {"builds": builds, "users": users, "projects": {"a": a, "b": b}}


@pytest.fixture
def as_user(client):
    def log_in(user):
        client.force_login(user)
        return client

    return log_in


def index(client):
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    return response


def test_a_member_sees_only_their_projects_builds_and_images_in_the_overview(world, as_user):
    builds = world["builds"]
    response = index(as_user(world["users"]["viewer"]))
    overview, page = response.context["overview"], response.content.decode()
    assert (overview.running, overview.failures, overview.pending, overview.failed_deletions) == (2, 2, 2, 1)
    assert [b.pk for b in overview.failed_builds] == [builds["a-failed"].pk, builds["a-lost"].pk]
    assert str(builds["a-failed"]) in page and str(builds["a-lost"]) in page
    assert str(builds["b-error"]) not in page and str(builds["a-old"]) not in page
    # Agents and the server clean-up are the superusers'.
    assert not overview.sees_agents and overview.agents_trouble == []
    assert "Clean up now" not in page and "Dry run" not in page and "short of space" not in page

    response = index(as_user(world["users"]["other"]))
    overview = response.context["overview"]
    assert (overview.running, overview.failures, overview.pending, overview.failed_deletions) == (1, 1, 3, 0)
    assert str(builds["a-failed"]) not in response.content.decode()


def test_the_overviews_links_open_lists_of_the_same_rows(world, as_user):
    client = as_user(world["users"]["viewer"])
    links = index(client).context["overview_links"]
    running = client.get(links["running"]).context["cl"].result_list
    assert {b.pk for b in running} == {world["builds"]["a-run-1"].pk, world["builds"]["a-run-2"].pk}
    failures = client.get(links["failures"]).context["cl"].result_list
    assert {b.pk for b in failures} == {world["builds"]["a-failed"].pk, world["builds"]["a-lost"].pk}
    assert {i.repository for i in client.get(links["pending"]).context["cl"].result_list} == {"a1", "a2"}
    assert {i.repository for i in client.get(links["failed_deletions"]).context["cl"].result_list} == {"a3"}


def test_a_superuser_sees_every_project_and_the_agents_offline_or_short_of_space(world, as_user):
    now = timezone.now()
    fine = AgentFactory(name="fine", keep_free_bytes=20 * GiB)
    offline = AgentFactory(name="gone-quiet")
    AgentFactory(name="brand-new")
    low, shortfall = AgentFactory(name="low", keep_free_bytes=20 * GiB), AgentFactory(name="shortfall")
    Agent.objects.filter(pk__in=[fine.pk, low.pk, shortfall.pk]).update(last_seen_at=now)
    Agent.objects.filter(pk=fine.pk).update(free_bytes=76 * GiB)
    Agent.objects.filter(pk=low.pk).update(free_bytes=5 * GiB)
    Agent.objects.filter(pk=offline.pk).update(last_seen_at=now - timedelta(days=1))
    AgentCleanup.objects.create(agent=shortfall, at=now - timedelta(hours=1), reason="build 7 requires 50G",
                                data_path="/d", required_bytes=50 * GiB, free_before=GiB, free_after=2 * GiB, met=False)
    AgentCleanup.objects.create(agent=fine, at=now - timedelta(days=3), reason="old shortfall", data_path="/d",
                                required_bytes=50 * GiB, free_before=GiB, free_after=2 * GiB, met=False)
    response = index(as_user(world["users"]["root"]))
    overview, page = response.context["overview"], response.content.decode()
    assert (overview.running, overview.failures, overview.pending, overview.failed_deletions) == (3, 3, 5, 1)
    troubles = {t.agent.name: (t.offline, bool(t.short)) for t in overview.agents_trouble}
    assert troubles == {"brand-new": (True, False), "gone-quiet": (True, False), "low": (False, True),
                        "shortfall": (False, True)}
    assert (overview.agents_offline, overview.agents_short) == (2, 2)
    assert reverse("admin:builds_agent_change", args=[low.pk]) in page
    assert reverse("admin:builds_agent_change", args=[fine.pk]) not in page
    assert "Clean up now" in page and "Dry run" in page
    assert 'action="%s"' % reverse("admin:server_cleanup_run") in page and "csrfmiddlewaretoken" in page


@pytest.fixture
def expired():
    """A configuration keeping 1 build: its older build goes at the next clean-up, with the image it pushed."""
    configuration = BuildConfigurationFactory(ident="keep-one", keep_last=1, cleanup_pushed_images=True)
    old = BuildFactory(configuration=configuration, number=1, status="succeeded",
                       started_at=timezone.now() - timedelta(days=2), finished_at=timezone.now())
    BuildFactory(configuration=configuration, number=2, status="succeeded", finished_at=timezone.now())
    pushed = image(configuration.project, "keep-one/app", "kept", build=old)
    return old, pushed


def test_the_dry_run_shows_the_plan_and_deletes_nothing(world, as_user, expired):
    old, pushed = expired
    client = as_user(world["users"]["root"])
    assert client.get(reverse("admin:server_cleanup_dry_run")).status_code == 405  # a POST, with its CSRF token
    response = client.post(reverse("admin:server_cleanup_dry_run"))
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was changed" in page
    assert "keep-one #1" in page and "not among the last 1" in page and pushed.reference in page
    assert re.search(r"delete\s*<strong>1 build\(s\)</strong> and <strong>1 pushed image\(s\)</strong>", page)
    assert Build.objects.filter(pk=old.pk).exists()
    pushed.refresh_from_db()
    assert pushed.cleanup_status == "kept" and not CleanupRun.objects.exists()


def test_clean_up_now_runs_the_server_clean_up(world, as_user, expired, django_capture_on_commit_callbacks):
    old, pushed = expired
    client = as_user(world["users"]["root"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:server_cleanup_run"))
    assert response.status_code == 302 and response.url == reverse("admin:builds_cleanuprun_changelist")
    # Embedded mode (no broker) runs the queued task at once: the run is recorded, the build deleted, and its image
    # tried (r.test has no connection: failed, with the reason).
    [run] = CleanupRun.objects.all()
    assert run.builds_deleted == 1 and run.finished_at is not None and run.trigger == "admin"
    assert not Build.objects.filter(pk=old.pk).exists()
    pushed.refresh_from_db()
    assert pushed.cleanup_status == "failed" and "no connection for r.test" in pushed.cleanup_reason


def test_only_superusers_may_run_or_plan_the_server_clean_up(world, as_user, expired,
                                                             django_capture_on_commit_callbacks):
    client = as_user(world["users"]["viewer"])
    with django_capture_on_commit_callbacks(execute=True):
        for name in ("admin:server_cleanup_run", "admin:server_cleanup_dry_run"):
            assert client.post(reverse(name)).status_code == 403, name
    assert Build.objects.filter(pk=expired[0].pk).exists() and not CleanupRun.objects.exists()


def test_the_index_lists_our_apps_first_and_keeps_celery_beats_internals_out_of_the_way(world, as_user):
    client = as_user(world["users"]["root"])
    app_list = index(client).context["app_list"]
    names = [app["name"] for app in app_list]
    assert names[:4] == ["Builds", "Projects and connections", "Agents", "Clean-up"]
    assert names[-2:] == ["Users and API tokens", "Schedules (advanced)"]
    models = {app["name"]: [m["object_name"] for m in app["models"]] for app in app_list}
    assert models["Builds"][0] == "Build" and models["Clean-up"] == ["PushedImage", "CleanupRun"]
    assert models["Schedules (advanced)"] == ["PeriodicTask"]
    shown = {m for names in models.values() for m in names}
    assert not {"CrontabSchedule", "IntervalSchedule", "SolarSchedule", "ClockedSchedule"} & shown
    # Out of the lists, not out of reach.
    for model in ("crontabschedule", "intervalschedule", "solarschedule", "clockedschedule"):
        assert client.get(reverse(f"admin:django_celery_beat_{model}_changelist")).status_code == 200, model
    sidebar = client.get(reverse("admin:builds_build_changelist")).context["available_apps"]
    assert [app["name"] for app in sidebar][:4] == names[:4]
    beat = client.get(reverse("admin:app_list", args=["django_celery_beat"])).context["app_list"]
    assert [[m["object_name"] for m in app["models"]] for app in beat] == [["PeriodicTask"]]


def test_a_members_index_has_no_agents_or_clean_up_runs(world, as_user):
    app_list = index(as_user(world["users"]["viewer"])).context["app_list"]
    models = {app["name"]: [m["object_name"] for m in app["models"]] for app in app_list}
    assert list(models)[:3] == ["Builds", "Projects and connections", "Clean-up"]
    assert models["Clean-up"] == ["PushedImage"] and "Agents" not in models
    assert "Schedules (advanced)" not in models


def chart(page: str) -> ET.Element:
    svg = re.search(r'<svg xmlns="http://www.w3.org/2000/svg".*?</svg>', page, re.S).group(0)
    return ET.fromstring(svg)


def test_the_free_space_chart_has_axes_in_gib_from_zero_and_the_keep_free_line(as_user):
    agent = AgentFactory(keep_free_bytes=20 * GiB)
    flat = int(76.1 * GiB)
    start = timezone.now() - timedelta(hours=6)
    for hour in range(3):
        AgentCleanup.objects.create(agent=agent, at=start + timedelta(hours=hour), reason="keep free 20G",
                                    data_path="/d", required_bytes=20 * GiB, free_before=flat, free_after=flat,
                                    met=True)
    client = as_user(User.objects.create_superuser("root", password="pw-root-1"))
    svg = chart(client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode())
    labels = {text.text: float(text.get("y", "nan")) for text in svg.iter(f"{SVG}text")}
    axis = svg.find(f".//{SVG}line[@class='ds-chart-x-axis']")
    baseline = float(axis.get("y1"))
    assert labels["0 GiB"] == baseline  # the y axis starts at 0
    gib_labels = sorted(float(label.split()[0]) for label in labels if label.endswith(" GiB") and "keep" not in label)
    assert gib_labels[0] == 0 and gib_labels[-1] >= 76.1
    assert "free space (GiB)" in labels and any(label.startswith("time (") for label in labels)
    ys = {float(point.split(",")[1]) for point in svg.find(f".//{SVG}polyline").get("points").split()}
    assert len(ys) == 1  # flat reads flat
    [y] = ys
    top = labels[f"{gib_labels[-1]:g} GiB"]
    assert y == pytest.approx(baseline - (baseline - top) * 76.1 / gib_labels[-1], abs=0.2)  # not a dip: at its height
    keep = svg.find(f".//{SVG}g[@class='ds-chart-keep-free']/{SVG}line")
    assert float(keep.get("y1")) == pytest.approx(baseline - (baseline - top) * 20 / gib_labels[-1], abs=0.2)
    assert "keep free 20.0 GiB" in labels


def test_an_agent_without_a_keep_free_threshold_has_no_threshold_line(as_user):
    agent = AgentFactory()
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now(), free_bytes=3 * GiB)
    client = as_user(User.objects.create_superuser("root", password="pw-root-1"))
    page = client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode()
    svg = chart(page)
    assert svg.find(f".//{SVG}g[@class='ds-chart-keep-free']") is None
    assert "3.0G – 3.0G free; 3.0G free when last heard from" in page


def test_pushed_images_of_running_builds_read_retained_and_long_references_are_cut_with_a_copy_button(as_user):
    running = BuildFactory()
    finished = BuildFactory(status="succeeded", finished_at=timezone.now())
    registry = "registry-with-a-rather-long-name.internal.example.test:5000"
    live = image(running.configuration.project, "team/service-with-a-long-name", "kept", build=running,
                 registry=registry)
    live.digest = "sha256:" + "b" * 64
    live.save()
    image(finished.configuration.project, "team/done", "kept", build=finished)
    assert len(live.reference) > 100
    client = as_user(User.objects.create_superuser("root", password="pw-root-1"))
    page = client.get(reverse("admin:builds_pushedimage_changelist")).content.decode()
    assert page.count('<span class="ds-badge ds-badge-running">retained</span>') == 1
    assert '<span class="ds-badge ds-badge-ok">Kept</span>' in page
    assert f'title="{live.reference}"' in page and f'data-copy="{live.reference}"' in page
    live.refresh_from_db()
    assert live.cleanup_status == "kept"  # a label only: the stored (and API) value stays


def test_agents_list_shows_their_state_as_badges(as_user):
    connected, offline = AgentFactory(name="up"), AgentFactory(name="down")
    AgentFactory(name="new")
    Agent.objects.filter(pk=connected.pk).update(last_seen_at=timezone.now(), free_bytes=5 * GiB,
                                                 keep_free_bytes=20 * GiB)
    Agent.objects.filter(pk=offline.pk).update(last_seen_at=timezone.now() - timedelta(days=2))
    client = as_user(User.objects.create_superuser("root", password="pw-root-1"))
    page = client.get(reverse("admin:builds_agent_changelist")).content.decode()
    for badge in ('ds-badge-ok">connected<', 'ds-badge-failed">offline<', 'ds-badge-waiting">never connected<',
                  'ds-badge-failed">below 20.0G<'):
        assert badge in page, badge
