"""An agent's clean-up settings: edited in the admin (keep patterns checked, sizes as people write them),
sent to the agent when it connects and with every heartbeat; a run's record keeps each removal's
reason and what stayed, and why."""

import json

import pytest
from django.urls import reverse
from django.utils import timezone

from agent import protocol
from builds.agents import services as agent_services
from builds.cleanup.agent import agent_cleanup_record, kept_items, removed_items
from builds.models import Agent, AgentImage
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db
HEADER = {"HTTP_X_DOCKERSUPPORT_PROTOCOL": str(protocol.PROTOCOL_VERSION)}


def change(admin_client, agent, **fields):
    data = {"name": agent.name, "os": "linux", "docker_host": "", "docker_data_path": "", "keep_patterns": "",
            "min_image_age": "600", "keep_free_bytes": "", "cleanups-TOTAL_FORMS": "0",
            "cleanups-INITIAL_FORMS": "0", "cleanups-MIN_NUM_FORMS": "0", "cleanups-MAX_NUM_FORMS": "0", **fields}
    return admin_client.post(reverse("admin:builds_agent_change", args=[agent.pk]), data)


def test_the_agent_page_edits_keep_patterns_minimum_age_and_keep_free(admin_client):
    agent = AgentFactory()
    response = change(admin_client, agent, keep_patterns="^registry\\.example\\.com/base/\n\nlatest$",
                      min_image_age="3600", keep_free_bytes="20G")
    assert response.status_code == 302, response.content.decode()[:3000]
    agent.refresh_from_db()
    assert (agent.keep_patterns, agent.min_image_age, agent.keep_free_bytes) == (
        "^registry\\.example\\.com/base/\n\nlatest$", 3600, 20 * 1024 ** 3)
    page = admin_client.get(reverse("admin:builds_agent_change", args=[agent.pk])).content.decode()
    assert 'value="20G"' in page and "Free Disk Space" in page


def test_an_invalid_keep_pattern_is_a_form_error_naming_it(admin_client):
    agent = AgentFactory()
    response = change(admin_client, agent, keep_patterns="^ok/\nbad(\n[z-a]", keep_free_bytes="5X")
    assert response.status_code == 200
    page = response.content.decode()
    assert "line 2: &#x27;bad(&#x27; is not a regular expression (missing ), unterminated subpattern" in page
    assert "line 3: &#x27;[z-a]&#x27; is not a regular expression (bad character range z-a" in page
    assert "&#x27;5X&#x27; is not a size" in page
    agent.refresh_from_db()
    assert agent.keep_patterns == "" and agent.keep_free_bytes is None


def test_empty_keep_free_means_only_when_asked(admin_client):
    agent = AgentFactory(keep_free_bytes=1024)
    assert change(admin_client, agent).status_code == 302
    agent.refresh_from_db()
    assert agent.keep_free_bytes is None


def test_the_agent_gets_its_settings_when_it_connects_and_with_every_heartbeat(client):
    agent, token, _ = agent_services.agent_token_issue(name="host-1")
    Agent.objects.filter(pk=agent.pk).update(keep_patterns=" ^keep/\n\n", min_image_age=60, keep_free_bytes=4096)
    headers = {**HEADER, "HTTP_AUTHORIZATION": f"Bearer {token}"}
    hello = {"agent_version": "1.0", "hostname": "h", "os": "linux", "daemon": {"ok": True}}
    settings = client.post("/api/v1/agent/connect/", json.dumps(hello), content_type="application/json",
                           **headers).json()
    assert settings["cleanup"] == {"keep_patterns": ["^keep/"], "min_image_age": 60, "keep_free_bytes": 4096}
    Agent.objects.filter(pk=agent.pk).update(keep_patterns="", min_image_age=0, keep_free_bytes=None)
    beat = client.post("/api/v1/agent/heartbeat/", json.dumps({"daemon": {"ok": True}, "running_builds": []}),
                       content_type="application/json", **headers).json()
    assert beat["cleanup"] == {"keep_patterns": [], "min_image_age": 0, "keep_free_bytes": None}
    assert protocol.from_json(protocol.HeartbeatAnswer, beat).cleanup == protocol.CleanupSettings(
        keep_patterns=[], min_image_age=0, keep_free_bytes=None)


def test_an_older_server_leaves_the_agent_with_the_safe_defaults():
    settings = protocol.from_json(protocol.AgentSettings, {"name": "a", "heartbeat_interval": 15, "job_wait": 5,
                                                           "shared": True, "projects": []})
    assert settings.cleanup == protocol.CleanupSettings(keep_patterns=[], min_image_age=600, keep_free_bytes=None)


def test_a_record_keeps_each_removal_with_its_reason_and_what_stayed():
    agent = AgentFactory()
    for reference in ("made/a:1", "made/c:1"):
        AgentImage.objects.create(agent=agent, reference=reference, created_by="build", first_seen_at=timezone.now(),
                                  last_used_at=timezone.now())
    report = protocol.CleanupReport(
        reason="keep free threshold: 1.0G free, 2.0G to keep", data_path="/var/lib/docker", required_bytes=2,
        free_before=1, free_after=2, met=True,
        removed=[{"image": "sha256:a", "references": ["made/a:1"], "size": 8, "freed": 8, "reason": "least used"},
                 {"kind": "build cache", "image": "", "references": [], "size": 9, "freed": 9, "records": 2,
                  "reason": "images were not enough", "extra": "x" * 10}],
        kept=[{"image": "sha256:c", "references": ["made/c:1"], "size": 8, "reason": "a container uses it (c)"},
              {"image": "sha256:d", "references": ["made/d:1", 7], "size": True, "reason": "r" * 5000}])
    run = agent_cleanup_record(agent=agent, report=report)
    run.refresh_from_db()
    assert removed_items(run) == [
        {"image": "sha256:a", "references": ["made/a:1"], "size": 8, "freed": 8, "reason": "least used"},
        {"kind": "build cache", "image": "", "references": [], "size": 9, "freed": 9, "records": 2,
         "reason": "images were not enough"}]
    assert kept_items(run) == [
        {"image": "sha256:c", "references": ["made/c:1"], "size": 8, "reason": "a container uses it (c)", "kept": True},
        {"image": "sha256:d", "references": ["made/d:1"], "reason": "r" * 1000, "kept": True}]
    # What was removed is no longer tracked; what stayed still is.
    assert list(AgentImage.objects.filter(agent=agent).values_list("reference", flat=True)) == ["made/c:1"]
