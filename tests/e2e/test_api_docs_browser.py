"""Swagger UI and Redoc render the API's schema in a real browser from this server's own static files:
not one request leaves it (no CDN, no fonts, no validator; Redoc's footer logo, an address of its
own, is refused by the page's Content-Security-Policy before it is sent). Screenshots:
test-output/api-docs.png and test-output/api-redoc.png."""

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


def requests_of(page) -> list[str]:
    requested, page.errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return requested


def sent_elsewhere(page, requested, live_server) -> list[str]:
    """Requests to another host that the browser sent (one the page's CSP blocked never left it)."""
    here = urlsplit(live_server.url).netloc
    blocked = {url for failure, url in page.broken if failure == "csp"}
    return [url for url in requested
            if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != here and url not in blocked]


def test_swagger_ui_shows_every_operation_from_our_own_files(open_page, live_server):
    page = open_page()
    requested = requests_of(page)
    page.goto(live_server.url + "/api/v1/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("dockersupport API")
    docker_info = page.locator(".opblock-summary-path", has_text="/api/v1/builds/{id}/docker-info/")
    expect(docker_info).to_have_count(1)
    assert page.locator(".opblock").count() >= 10
    docker_info.click()  # its parameters, page and page_size among them
    expect(page.locator(".parameters-col_name", has_text="page_size")).to_have_count(1)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "api-docs.png"), full_page=False)
    assert page.broken == [] and page.errors == []
    assert sent_elsewhere(page, requested, live_server) == []
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in url for url in requested)


def test_redoc_shows_the_schema_from_our_own_files(open_page, live_server):
    page = open_page()
    requested = requests_of(page)
    page.goto(live_server.url + "/api/v1/redoc/")
    expect(page.locator("h1", has_text="dockersupport API")).to_be_visible()
    expect(page.get_by_text("operations_next").first).to_be_attached()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "api-redoc.png"), full_page=False)
    assert page.broken == [("csp", "https://cdn.redoc.ly/redoc/logo-mini.svg")]  # not sent
    assert page.errors == []
    assert sent_elsewhere(page, requested, live_server) == []
    assert any("/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in url for url in requested)
