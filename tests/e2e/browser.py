"""A real browser for the admin's tests: Debian's chromium, headless, driven by Playwright.

No browser is ever downloaded: Playwright launches /usr/bin/chromium (`scripts/install-test-deps.sh`
installs it); never run `playwright install`. Outside CI a missing chromium or playwright skips with
the reason; with CI=true it fails. tests/e2e/conftest.py makes `open_page` a fixture of every e2e test.
"""

import os
from pathlib import Path

import pytest

from tests.conftest import IN_CI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu",
                 "--no-first-run", "--disable-sync"]
# The width an administrator's laptop gives the admin (issue 15: every page must fit it).
LAPTOP = {"width": 1366, "height": 900}


def unavailable(reason):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def open_page(monkeypatch, live_server):
    """open_page(viewport=LAPTOP) → a Playwright page of Debian's chromium, headless, in a fresh context that
    may use the clipboard on the live server's origin. Every response of 400 or more and every failed request
    is recorded in page.broken, the others in page.loaded. The browser and its processes end with the test.

    Playwright's sync API runs an event loop in this thread, and Django refuses the ORM where a loop
    runs: query the database before open_page(), not after."""
    monkeypatch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -r requirements-test.txt)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium, or scripts/install-test-deps.sh)")
    started = {}

    def open_page(viewport=LAPTOP):
        if "playwright" not in started:
            started["playwright"] = sync_playwright().start()
            started["browser"] = started["playwright"].chromium.launch(executable_path=CHROMIUM, headless=True,
                                                                       args=CHROMIUM_ARGS)
        context = started["browser"].new_context(viewport=viewport)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.loaded, page.broken = [], []
        page.on("response", lambda r: (page.loaded if r.status < 400 else page.broken).append((r.status, r.url)))
        # A request the browser cancels because the page navigates on (net::ERR_ABORTED) is not broken.
        page.on("requestfailed", lambda r: r.failure == "net::ERR_ABORTED" or page.broken.append((r.failure, r.url)))
        return page

    yield open_page
    try:
        if "browser" in started:
            started["browser"].close()  # ends its chromium processes
    finally:
        if "playwright" in started:
            started["playwright"].stop()


def log_in(page, live_server, username, password):
    """Logs in on the admin's login page; the page ends on the admin's index."""
    page.goto(live_server.url + "/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(live_server.url + "/admin/")


def overflow(page) -> int:
    """How many CSS pixels of the page's content lie beyond the window sideways, in the document or in a box
    that scrolls sideways (the admin's list tables scroll inside `.results`): 0 means it fits, nothing to
    scroll sideways. Form fields (which scroll their own text) do not count."""
    return page.evaluate("""() => {
        let most = Math.max(0, document.documentElement.scrollWidth - window.innerWidth);
        for (const element of document.querySelectorAll("body *")) {
            if (["INPUT", "TEXTAREA", "SELECT"].includes(element.tagName)) continue;
            const style = getComputedStyle(element);
            if (!["auto", "scroll"].includes(style.overflowX) || element.clientWidth === 0) continue;
            most = Math.max(most, element.scrollWidth - element.clientWidth);
        }
        return most;
    }""")


def too_wide(page) -> list[str]:
    """What makes the page too wide: the boxes that scroll sideways, with their widths (for failure messages)."""
    return page.evaluate("""() => [...document.querySelectorAll("body *")].filter(element => {
        const style = getComputedStyle(element);
        return !["INPUT", "TEXTAREA", "SELECT"].includes(element.tagName) && element.clientWidth > 0
            && ["auto", "scroll"].includes(style.overflowX) && element.scrollWidth > element.clientWidth;
    }).map(element => `${element.tagName.toLowerCase()}.${element.className}: ${element.scrollWidth} px in `
                      + `${element.clientWidth} px`)""")
