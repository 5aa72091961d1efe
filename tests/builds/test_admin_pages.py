"""Admin pages of agents, builds and clean-up runs show what the clean-ups did."""

import pytest
from django.urls import reverse
from django.utils import timezone

from builds.models import AgentCleanup, CleanupRun, PushedImage
from tests.factories import AgentFactory, BuildFactory, ProjectFactory

pytestmark = pytest.mark.django_db
MiB = 1024 * 1024


def test_agent_page_shows_free_disk_space_runs_and_a_chart(admin_client):
    agent = AgentFactory()
    for n, (before, after) in enumerate([(100, 300), (250, 250), (120, 400)]):
        AgentCleanup.objects.create(agent=agent, at=timezone.now(), reason=f"build {n} requires 1G", data_path="/d",
                                    required_bytes=300 * MiB, free_before=before * MiB, free_after=after * MiB,
                                    bytes_reclaimed=(after - before) * MiB, met=after >= 300,
                                    removed=[{"references": [f"made/{n}:1"], "size": MiB}])
    page = admin_client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode()
    assert "<svg" in page and "100.0M – 400.0M free, over the last 3 run(s)" in page
    assert "made/2:1" in page and "build 1 requires 1G" in page


def test_build_list_says_what_is_pending_deletion(admin_client):
    project = ProjectFactory()
    for status in ("pending", "pending", "failed", "deleted"):
        PushedImage.objects.create(project=project, configuration_ident="c", build_number=1, registry="r.test",
                                   repository="a", tag=status, digest="", pushed_at=timezone.now(),
                                   cleanup_status=status)
    BuildFactory()
    response = admin_client.get(reverse("admin:builds_build_changelist"))
    [message] = [str(m) for m in response.context["messages"]]
    assert "Images of deleted builds: 2 pending deletion, 1 failed." in message


def test_cleanup_run_page_lists_each_outcome_with_its_reason(admin_client):
    run = CleanupRun.objects.create(trigger="command", started_at=timezone.now(), builds_deleted=1, images_kept=1,
                                    details=[{"build": "app #1", "outcome": "deleted", "reason": "older than 3 days"},
                                             {"image": "r/a@sha256:1", "outcome": "kept",
                                              "reason": "tag 'stable' also points to this digest"}])
    page = admin_client.get(reverse("admin:builds_cleanuprun_change", args=[run.pk])).content.decode()
    assert "app #1: <strong>deleted</strong> — older than 3 days" in page
    assert "tag &#x27;stable&#x27; also points to this digest" in page


def test_failed_deletions_can_be_retried_from_the_admin(admin_client, django_capture_on_commit_callbacks):
    image = PushedImage.objects.create(project=ProjectFactory(), configuration_ident="c", build_number=1,
                                       registry="r.test", repository="a", tag="1", digest="sha256:" + "1" * 64,
                                       pushed_at=timezone.now(), cleanup_status="failed", cleanup_reason="HTTP 401")
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:builds_pushedimage_changelist"),
                          {"action": "retry_deletion", "_selected_action": [image.pk]})
    image.refresh_from_db()
    # Retried at once (embedded mode runs the task in-process): r.test has no connection, so it fails again,
    # with the reason of this attempt.
    assert image.cleanup_status == "failed"
    assert image.cleanup_reason == "no connection for r.test in project '%s' or its ancestors" % image.project.ident
    assert image.cleanup_attempts == 1


def test_an_agent_whose_daemon_does_not_answer_says_so_plainly(admin_client):
    from django.utils import timezone

    from builds.models import Agent

    agent = AgentFactory(name="quiet")
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now(), daemon_ok=False,
                                             daemon_error="the Docker daemon at unix:///x does not answer")
    page = admin_client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode()
    assert "The Docker daemon of agent quiet does not answer: the Docker daemon at unix:///x does not answer" in page
    assert "NOT ANSWERING" in admin_client.get(reverse("admin:builds_agent_changelist")).content.decode()


def test_an_agent_that_never_connected_says_how_to_start_it(admin_client):
    agent = AgentFactory(name="new-one")
    page = admin_client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode()
    assert "Agent new-one is not connected: never connected" in page
    assert "manage.py agent --server URL --token-file FILE" in page


def test_the_admin_replaces_and_revokes_agent_tokens(admin_client):
    from builds.agents.services import agent_authenticate, agent_token_issue

    agent, old, _ = agent_token_issue(name="host-1")
    url = reverse("admin:builds_agent_changelist")
    response = admin_client.post(url, {"action": "replace_token", "_selected_action": [agent.pk]})
    new = response.content.decode().split('<code class="shown-once-token">')[1].split("</code>")[0]
    assert new.startswith("dsa_") and agent_authenticate(new) == agent and agent_authenticate(old) is None
    # Shown on the page alone: in no cookie (the messages cookie is signed, not encrypted), never cached.
    assert "no-store" in response["Cache-Control"]
    assert all(new not in cookie.value for cookie in response.cookies.values())
    admin_client.post(url, {"action": "revoke_token", "_selected_action": [agent.pk]})
    assert agent_authenticate(new) is None


def test_a_malformed_build_id_in_the_docker_info_tab_is_a_404(admin_client):
    assert admin_client.get("/admin/builds/build/abc/docker-info/").status_code == 404
