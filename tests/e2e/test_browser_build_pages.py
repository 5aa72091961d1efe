"""The builds list, a build's page and its Docker Info tab in a real browser at 1366 px: nothing wider than the
window, images by name, and an empty Docker Info that says why.

Two real builds go through run_build: one pulls, tags, pushes and runs containers (one from an image ID, one that
fails); the other's required login is refused by the registry, so it never runs. Full-page screenshots are kept
under test-output/ (builds-list.png, operations-list.png, build-page.png, docker-info-build.png,
docker-info-empty.png).
"""

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from builds.models import Build, PushedImage
from tests.e2e.browser import log_in, overflow
from tests.e2e.conftest import ROOT
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory, LoginConnectionFactory

pytestmark = [pytest.mark.e2e]

OUTPUT = ROOT / "test-output"
USERNAME, PASSWORD = "pages-admin", "pages-admin-password-1"


def screenshot(page, name):
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


def test_the_build_pages_fit_a_laptop_and_explain_themselves(manage, agent, registry_configuration, private_image,
                                                            registry, busybox_image, live_server, open_page):
    from playwright.sync_api import expect

    # A build that did things: its containers run from a name and from an image ID, one of them fails.
    pushed = f"{registry.address}/team/pages-with-a-rather-long-repository-name/service:1"
    script = (f"docker pull {private_image} && docker tag {private_image} {pushed} && docker push {pushed} && "
              f"id=$(docker image inspect -f '{{{{.Id}}}}' {pushed}) && "
              f"docker run --network none --name by-id-{agent.name} $id true && "
              f"docker run --network none --name failing-{agent.name} {busybox_image} sh -c 'exit 3'; "
              f"docker rm by-id-{agent.name} failing-{agent.name} >/dev/null; true")
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    image = PushedImage.objects.get(build=build)
    image_id = build.operations.get(action="tag").attributes["image_id"]
    assert image_id.startswith("sha256:")

    # A build whose required login the registry refuses: it never runs.
    refused = BuildConfigurationFactory(project=registry_configuration.project, ident="refused-login")
    LoginConnectionFactory(configuration=refused, connection__project=refused.project, connection__ident="wrong",
                           connection__registry=registry.address, connection__username=registry.username,
                           connection__password="not-the-password")
    result = manage("run_build", refused.ident, "--agent", agent.name, "--", "true")
    assert result.returncode != 0
    error_build = Build.objects.get(configuration=refused)
    assert error_build.status == Build.Status.ERROR and "wrong" in error_build.error

    # An image of a deleted build whose deletion failed: the list's banner warns.
    PushedImage.objects.create(project=refused.project, configuration_ident="gone", build_number=1,
                               registry=registry.address, repository="gone/app", tag="1", pushed_at=timezone.now(),
                               cleanup_status="failed", cleanup_reason="HTTP 401")
    # The widest rows a list has: a long configuration id, pinned and running; a failure with its exit code.
    long = BuildConfigurationFactory(project=refused.project, ident="a-configuration-with-a-very-long-identifier-1")
    host = AgentFactory(name="build-host-with-a-rather-long-name-01")
    BuildFactory(configuration=long, agent=host, number=123456, pinned=True)
    started = timezone.now() - timedelta(hours=2)
    BuildFactory(configuration=long, agent=host, number=123455, status=Build.Status.FAILED, exit_code=137,
                 started_at=started, finished_at=started + timedelta(minutes=75))
    get_user_model().objects.create_superuser(USERNAME, "pages-admin@example.com", PASSWORD)
    urls = {name: live_server.url + reverse(f"admin:builds_build_{name}", args=[build.pk])
            for name in ("change", "docker_info")}
    title = f"Build {build}"
    empty_url = live_server.url + reverse("admin:builds_build_docker_info", args=[error_build.pk])
    builds_url = live_server.url + reverse("admin:builds_build_changelist")
    operations_url = live_server.url + reverse("admin:builds_dockeroperation_changelist")
    # No database query from here on: Playwright's event loop runs in this thread.
    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)

    # The builds list: statuses as badges, the banner a warning, nothing cut off at 1366 px.
    page.goto(builds_url)
    expect(page.locator("ul.messagelist li.warning")).to_contain_text("1 failed")
    expect(page.locator("#result_list .ds-badge-failed", has_text="error")).to_have_count(1)
    expect(page.locator("#result_list .ds-badge-ok", has_text="succeeded")).to_have_count(1)
    expect(page.locator("#result_list .ds-badge-failed", has_text="failed · exit 137")).to_be_visible()
    expect(page.locator("#result_list .ds-badge-running", has_text="pinned")).to_be_visible()
    screenshot(page, "builds-list.png")
    assert overflow(page) == 0

    page.goto(operations_url)
    expect(page.locator("#result_list")).to_contain_text(f"failing-{agent.name}")
    expect(page.locator("#result_list .ds-badge-failed")).to_have_text("3")
    screenshot(page, "operations-list.png")
    assert overflow(page) == 0

    # The build's page: read-only, what it is, where it ran, what it logged in to.
    page.goto(urls["change"])
    expect(page.locator("h1")).to_have_text(title)
    expect(page.locator(".submit-row")).to_have_count(0)
    expect(page.locator("#content-main input[type=checkbox]")).to_have_count(0)
    expect(page.locator("#build-status .ds-badge-ok")).to_have_text("Succeeded")
    expect(page.locator("#build-duration")).to_have_text(re.compile(r"^\d+(\.\d s|m \d\ds)$"))
    logins = page.locator("#build-logins tbody tr")
    expect(logins).to_have_count(1)
    expect(logins.first).to_contain_text(registry.address)
    expect(logins.first.locator(".ds-badge-ok")).to_have_text("logged in")
    expect(page.locator("#build-pushed .ds-badge-neutral")).to_have_text("retained")
    page.wait_for_load_state("networkidle")
    screenshot(page, "build-page.png")
    assert overflow(page) == 0
    assert page.broken == [], page.broken
    page.click("#build-pin")
    expect(page.locator("#build-pin")).to_have_text("Unpin")
    expect(page.locator("#build-pinned")).to_contain_text("Pinned")

    # Its Docker Info: the container run from an ID shows the image by the name the build gave it.
    page.goto(urls["docker_info"])
    by_id = page.locator("#docker-info-containers tbody tr", has_text=f"by-id-{agent.name}")
    # Named by the first reference the build gave that ID: its pull (which records the image's ID).
    expect(by_id.locator(".ds-image")).to_have_text(private_image)
    expect(by_id.locator(".ds-image")).to_have_attribute("title", image_id)
    failing = page.locator("#docker-info-containers tbody tr.ds-failed")
    expect(failing).to_contain_text(f"failing-{agent.name}")
    expect(page.locator("#docker-info-pushed .ds-badge-neutral")).to_have_text("retained")
    expect(page.locator("#docker-info-pushed code")).to_have_attribute("title", image.digest)
    operations = page.locator("#docker-info-operations tbody tr.ds-action-create")
    expect(operations.first.locator(".ds-image")).to_have_attribute("title", re.compile(r"^(sha256:|dockersupport)"))
    page.wait_for_load_state("networkidle")
    screenshot(page, "docker-info-build.png")
    assert overflow(page) == 0

    # The Docker Info of the build that never ran says why, with the registry's answer.
    page.goto(empty_url)
    empty = page.locator("#docker-info-empty")
    expect(empty.locator(".ds-why")).to_have_text("A registry login failed, so the build's command never ran.")
    expect(empty.locator(".ds-detail")).to_contain_text("login with connection")
    expect(page.locator("#docker-info-summary")).to_have_count(0)
    screenshot(page, "docker-info-empty.png")
    assert overflow(page) == 0
    assert page.broken == [], page.broken
