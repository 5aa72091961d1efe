"""The admin's index overview, agents, an agent's page, pushed images and clean-up runs fit a 1366 px laptop.

A superuser logs in on pytest-django's live server in Debian's chromium (tests/e2e/browser.py): each page is no
wider than the window, the overview links where it counts, a pushed image's 100+ character reference is cut with
a copy button that copies it whole, and the dry run shows the plan. Full-page screenshots go to test-output/
(admin-index.png, agent-page.png, pushed-images.png).
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from builds.models import Agent, AgentCleanup, CleanupRun, PushedImage
from connections.models import Membership
from tests.e2e.browser import log_in, overflow
from tests.e2e.conftest import ROOT
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory, ProjectFactory

pytestmark = [pytest.mark.e2e]

OUTPUT = ROOT / "test-output"
GiB = 1024 ** 3
USERNAME, PASSWORD = "overview-admin", "overview-admin-password-1"
VIEWER, VIEWER_PASSWORD = "overview-viewer", "overview-viewer-password-1"


def a_busy_site():
    """Agents up, down and short of space; running, failed and expired builds; pushed images with long references;
    clean-up runs with every outcome. Returns the URLs the test opens and what it expects there."""
    now = timezone.now()
    project = ProjectFactory(ident="acme-platform-services", name="ACME platform services")
    other = ProjectFactory(ident="other-team")
    configuration = BuildConfigurationFactory(ident="service-image-with-a-long-identifier", project=project,
                                              keep_last=2, cleanup_pushed_images=True)
    builder = AgentFactory(name="build-host-with-a-long-name-01", keep_free_bytes=20 * GiB)
    AgentFactory(name="build-host-02-offline")
    short = AgentFactory(name="build-host-03", keep_free_bytes=50 * GiB)
    builder.projects_assign([project, other])
    Agent.objects.filter(pk=builder.pk).update(last_seen_at=now, free_bytes=int(76.1 * GiB), daemon_ok=True,
                                               daemon_version="27.5.1", hostname="ci-builder-01.example.test")
    Agent.objects.filter(pk=short.pk).update(last_seen_at=now, free_bytes=12 * GiB, daemon_ok=False,
                                             daemon_error="Cannot connect to the Docker daemon at "
                                                          "unix:///var/run/docker.sock. Is the docker daemon running?")
    for hour, (before, after) in enumerate([(76.1, 76.1), (40.0, 76.1), (76.1, 76.1), (22.5, 61.0)]):
        AgentCleanup.objects.create(agent=builder, at=now - timedelta(hours=12 - 3 * hour),
                                    reason=f"build {hour} requires 30G", data_path="/var/lib/docker",
                                    required_bytes=30 * GiB, free_before=int(before * GiB), free_after=int(after * GiB),
                                    bytes_reclaimed=int((after - before) * GiB), met=True,
                                    removed=[{"references": [f"registry.example.test/base/image-{hour}:latest"],
                                              "size": GiB, "reason": "least recently used"}])
    builds = [BuildFactory(configuration=configuration, agent=builder, number=n, status=status,
                           started_at=now - timedelta(days=10 - n), finished_at=None if status == "running" else now)
              for n, status in enumerate(["succeeded", "succeeded", "failed", "lost", "running"], start=1)]
    registry = "registry-with-a-rather-long-host-name.internal.example.test:5000"
    images = [PushedImage.objects.create(
        project=project, build=build, configuration_ident=configuration.ident, build_number=build.number,
        registry=registry, repository="platform/service-image-with-a-long-name", tag=f"release-2025.{build.number}",
        digest="sha256:" + f"{build.number}" * 64, pushed_at=build.started_at, cleanup_status=status,
        cleanup_reason=reason) for build, status, reason in (
            (builds[0], "kept", ""), (builds[2], "pending", "HTTP 503 from the registry: retrying later"),
            (builds[3], "failed", "no connection for the registry in project 'acme-platform-services'"),
            (builds[4], "kept", ""))]
    assert len(images[-1].reference) > 100
    CleanupRun.objects.create(trigger="schedule", started_at=now - timedelta(days=1), finished_at=now,
                              builds_deleted=2, images_deleted=3, images_kept=1, images_failed=1, images_retrying=1,
                              details=[{"build": "app #1", "outcome": "deleted", "reason": "older than 3 days"}])
    CleanupRun.objects.create(trigger="command", started_at=now - timedelta(hours=2), finished_at=now,
                              builds_deleted=0)
    get_user_model().objects.create_superuser(USERNAME, "overview-admin@example.com", PASSWORD)
    viewer = get_user_model().objects.create_user(VIEWER, password=VIEWER_PASSWORD)
    Membership.objects.create(project=other, user=viewer, role=Membership.Role.VIEWER)
    return {"agent": reverse("admin:builds_agent_change", args=[builder.pk]),
            "agents": reverse("admin:builds_agent_changelist"),
            "images": reverse("admin:builds_pushedimage_changelist"),
            "runs": reverse("admin:builds_cleanuprun_changelist"),
            "long_reference": images[-1].reference}


def scrolled_inside(page) -> list[str]:
    """Boxes of the page that scroll sideways (a list's table wider than its box hides columns at the right)."""
    return page.evaluate("""Array.from(document.querySelectorAll('#content *')).filter(e => {
        const x = getComputedStyle(e).overflowX;
        return (x === 'auto' || x === 'scroll') && e.scrollWidth - e.clientWidth > 1;
    }).map(e => `${e.tagName}.${e.className} ${e.scrollWidth - e.clientWidth}px`)""")


def fits(page, url, screenshot=None):
    page.goto(url)  # waits for the load event: styles and scripts are in
    if screenshot:
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / screenshot), full_page=True)
    assert overflow(page) == 0, f"{url} is {overflow(page)} px wider than the window"
    assert scrolled_inside(page) == [], url


def test_the_overview_and_the_agent_and_clean_up_pages_fit_a_laptop(live_server, open_page):
    from playwright.sync_api import expect

    site = a_busy_site()
    # No database query from here on: Playwright's event loop runs in this thread.
    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)

    fits(page, live_server.url + "/admin/", "admin-index.png")
    overview = page.locator(".ds-overview")
    expect(overview.locator(".ds-card", has_text="Running builds").locator(".ds-figure")).to_have_text("1")
    expect(overview.locator(".ds-card", has_text="Failures")).to_contain_text("service-image-with-a-long-identifier #4")
    expect(overview.locator(".ds-card", has_text="Agents")).to_contain_text("build-host-02-offline")
    expect(overview.locator(".ds-card", has_text="Agents")).to_contain_text("short of space")
    groups = page.locator("#content-main .module caption a")
    expect(groups.first).to_have_text("Builds")
    expect(page.locator("#content-main")).not_to_contain_text("Crontabs")

    fits(page, live_server.url + site["agents"])
    fits(page, live_server.url + site["agent"], "agent-page.png")
    expect(page.locator("svg[aria-label^='free space over time']")).to_contain_text("0 GiB")
    fits(page, live_server.url + site["images"], "pushed-images.png")
    row = page.locator("#result_list tbody tr", has_text="retained")
    expect(row).to_have_count(1)
    row.locator(".ds-copy-button").click()
    expect(row.locator(".ds-copy-button")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == site["long_reference"]
    fits(page, live_server.url + site["runs"])

    # The dry run from the overview: the plan on a page of its own, which fits too.
    page.goto(live_server.url + "/admin/")
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#content-main")).to_contain_text("Nothing was changed")
    expect(page.locator(".ds-plan")).to_contain_text("service-image-with-a-long-identifier #1")
    assert overflow(page) == 0
    assert page.broken == [], page.broken


def test_a_viewer_sees_no_clean_up_buttons_and_no_agents(live_server, open_page):
    from playwright.sync_api import expect

    a_busy_site()
    page = open_page()
    log_in(page, live_server, VIEWER, VIEWER_PASSWORD)
    overview = page.locator(".ds-overview")
    expect(overview.locator(".ds-card", has_text="Running builds").locator(".ds-figure")).to_have_text("0")
    expect(overview).not_to_contain_text("service-image-with-a-long-identifier")
    expect(page.get_by_role("button", name="Clean up now")).to_have_count(0)
    expect(page.get_by_role("button", name="Dry run")).to_have_count(0)
    expect(overview.locator(".ds-card", has_text="Agents")).to_have_count(0)
    assert overflow(page) == 0
