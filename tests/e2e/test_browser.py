"""The build's Docker Info tab in a real browser: Debian's chromium, headless, driven by Playwright.

A real build pulls, tags, pushes and runs a failing container through run_build; an administrator
logs in on pytest-django's live server (which serves the static files through staticfiles' finders),
opens the build, clicks the "Docker Info" tab, copies a pushed image's reference and filters the
operations. A full-page screenshot is written to test-output/docker-info.png on every run.

The browser: tests/e2e/browser.py (Debian's chromium, never a downloaded one).
"""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from builds.models import Build, PushedImage
from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.e2e]

SCREENSHOT = ROOT / "test-output" / "docker-info.png"
USERNAME, PASSWORD = "browser-admin", "browser-admin-password-1"


def test_the_docker_info_tab_in_a_browser(manage, agent, registry_configuration, private_image, registry,
                                          busybox_image, live_server, open_page):
    from playwright.sync_api import expect

    pushed = f"{registry.address}/team/browser:1"
    container = f"failing-{agent.name}"
    script = (f"docker pull {private_image} && docker tag {private_image} {pushed} && docker push {pushed} && "
              f"docker run --network none --name {container} {busybox_image} sh -c 'exit 3'; "
              f"docker rm {container} >/dev/null; true")
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    image = PushedImage.objects.get(build=build)
    assert image.digest.startswith("sha256:")
    reference = f"{image.registry}/{image.repository}@{image.digest}"
    operation_count, push_count = build.operations.count(), build.operations.filter(action="push").count()
    assert 1 <= push_count < operation_count
    get_user_model().objects.create_superuser(USERNAME, "browser-admin@example.com", PASSWORD)
    change_url = live_server.url + reverse("admin:builds_build_change", args=[build.pk])
    docker_info_url = live_server.url + reverse("admin:builds_build_docker_info", args=[build.pk])
    # No database query from here on: Playwright's event loop runs in this thread.
    page = open_page()

    # Log in.
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/admin/")

    # The build's change page, then its "Docker Info" tab.
    page.goto(change_url)
    expect(page.locator("#docker-info-tab")).to_have_text("Docker Info")
    page.click("#docker-info-tab")
    expect(page).to_have_url(docker_info_url)
    expect(page.locator("#docker-info-tab")).to_have_attribute("aria-current", "page")
    page.wait_for_load_state("networkidle")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Styled: the admin's CSS, the tab's CSS and script all loaded from the live server.
    assert page.broken == [], page.broken
    loaded = {url.split("?")[0].rsplit("/static/", 1)[-1] for status, url in page.loaded if "/static/" in url}
    assert {"admin/css/base.css", "builds/docker_info.css", "dockersupport/copy.js"} <= loaded, sorted(loaded)

    # Summary.
    summary = page.locator("#docker-info-summary")
    card = lambda text: summary.locator(".ds-card", has_text=text)  # noqa: E731
    expect(card("operations").locator(".ds-number")).to_have_text(str(operation_count))
    expect(card("images pushed").locator(".ds-number")).to_have_text("1")
    expect(card("containers run").locator(".ds-number")).to_have_text("1")
    expect(card("containers run")).to_contain_text("1 failed")
    expect(card("containers run")).to_have_class(re.compile(r"\bds-failed\b"))
    expect(page.locator("#docker-info-warnings")).to_have_count(0)  # the only pull was logged in

    # The failed container, highlighted.
    rows = page.locator("#docker-info-containers tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_class(re.compile(r"\bds-failed\b"))
    expect(rows.first).to_contain_text(container)
    expect(rows.first.locator(".ds-exit")).to_have_text("3 — failed")
    expect(rows.first.locator("td").first).to_have_css("background-color", "rgb(253, 232, 232)")

    # The pushed image, its digest and its reference to copy.
    pushed_rows = page.locator("#docker-info-pushed tbody tr")
    expect(pushed_rows).to_have_count(1)
    expect(pushed_rows.first.locator("td").first).to_have_text(pushed)
    expect(pushed_rows.first.locator("code")).to_have_text(image.digest)
    copy = pushed_rows.first.locator("button.ds-copy")
    expect(copy).to_have_attribute("data-copy", reference)
    expect(copy).to_have_text("Copy reference")
    # localhost is a secure context even on plain http, so the clipboard can be read back there; on another
    # plain-http host (--liveserver) the page has no clipboard API and only the button's answer can be seen.
    clipboard = page.evaluate("window.isSecureContext && !!navigator.clipboard")
    assert clipboard or urlsplit(live_server.url).hostname not in ("localhost", "127.0.0.1"), live_server.url
    if clipboard:
        page.evaluate("navigator.clipboard.writeText('nothing copied yet')")
    copy.click()
    expect(copy).to_have_text("Copied")
    if clipboard:
        assert page.evaluate("navigator.clipboard.readText()") == reference

    # The filter: push operations only.
    page.select_option("#docker-info-filter select[name=action]", "push")
    page.click("#docker-info-filter input[type=submit]")
    expect(page).to_have_url(re.compile(r"[?&]action=push(&|$)"))
    operations = page.locator("#docker-info-operations tbody tr")
    expect(operations).to_have_count(push_count)
    for row in operations.all():
        expect(row).to_have_class(re.compile(r"\bds-action-push\b"))
        expect(row.locator("td").nth(1)).to_have_text("push")
    expect(page.locator("#docker-info-filter select[name=action]")).to_have_value("push")
