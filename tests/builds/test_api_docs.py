"""The API explains itself: a root with links, Swagger UI and Redoc served from our own static files
(drf-spectacular-sidecar, nothing from a CDN), and a schema a browser shows instead of saving."""

import re

import pytest
import yaml
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def assets(html: str) -> list[str]:
    """Every script's and stylesheet's (and icon's) address in a page."""
    return re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) + re.findall(r'<link[^>]*\bhref="([^"]+)"', html)


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize("url, bundle", [
    ("/api/v1/docs/", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"),
    ("/api/v1/redoc/", "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"),
])
def test_the_docs_pages_load_everything_from_the_server_itself(client, url, bundle):
    page = client.get(url, HTTP_ACCEPT=BROWSER)
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert "https://" not in html and "http://" not in html and "cdn" not in html.lower()
    found = assets(html)
    assert bundle in found
    for address in found:
        assert address.startswith("/"), address  # this server, never another host
        asset = client.get(address)
        assert asset.status_code == 200, address
        assert len(body(asset)) > 500, address  # the real file, not an empty answer
    scripts = [client.get(a) for a in found if re.search(r"\.js$|\?script", a)]
    assert scripts and all("javascript" in s["Content-Type"] for s in scripts)


def test_swagger_ui_is_started_by_a_script_of_its_own_that_points_at_the_schema(client):
    html = client.get("/api/v1/docs/").content.decode()
    assert "<script>" not in html  # no inline script: a strict Content-Security-Policy allows the page
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert 'url: "/api/v1/schema/"' in script.content.decode()


def test_redoc_reads_the_schema_at_its_stable_address(client):
    assert '<redoc spec-url="/api/v1/schema/">' in client.get("/api/v1/redoc/").content.decode()


def test_the_docs_are_open_to_whoever_may_read_the_schema(client):
    """The schema is public (it holds no data); its documentation pages are the same."""
    for url in ("/api/v1/schema/", "/api/v1/docs/", "/api/v1/redoc/", "/api/v1/"):
        assert client.get(url).status_code == 200, url
    member = User.objects.create_user("viewer-only", password="pw-viewer")  # no project, no staff
    client.force_login(member)
    for url in ("/api/v1/schema/", "/api/v1/docs/", "/api/v1/redoc/", "/api/v1/"):
        assert client.get(url).status_code == 200, url


def test_the_api_root_links_to_the_builds_the_schema_and_its_docs(client):
    response = client.get("/api/v1/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response.json() == {
        "builds": "http://testserver/api/v1/builds/",
        "schema": "http://testserver/api/v1/schema/",
        "docs": "http://testserver/api/v1/docs/",
        "redoc": "http://testserver/api/v1/redoc/",
    }
    for link in response.json().values():
        assert client.get(link, HTTP_ACCEPT="*/*").status_code in (200, 401), link  # builds: log in first


def test_the_api_root_in_a_browser_is_a_page_not_a_debug_404(client):
    response = client.get("/api/v1/", HTTP_ACCEPT=BROWSER)
    assert response.status_code == 200
    assert "/api/v1/docs/" in response.content.decode()


def test_a_browser_is_shown_the_schema_as_text(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT=BROWSER)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"].startswith("inline")
    assert yaml.safe_load(response.content)["paths"]["/api/v1/builds/{id}/docker-info/"]


def test_the_json_schema_is_application_json_which_browsers_show(client):
    response = client.get("/api/v1/schema/?format=json", HTTP_ACCEPT=BROWSER)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response.json()["openapi"].startswith("3.")


@pytest.mark.parametrize("accept, content_type", [
    ("*/*", "application/vnd.oai.openapi; charset=utf-8"),  # curl
    (None, "application/vnd.oai.openapi; charset=utf-8"),
    ("application/vnd.oai.openapi+json", "application/vnd.oai.openapi+json"),
    ("application/json", "application/json"),
    ("application/yaml", "application/yaml; charset=utf-8"),
])
def test_tools_get_the_schema_as_before(client, accept, content_type):
    response = client.get("/api/v1/schema/", **({"HTTP_ACCEPT": accept} if accept else {}))
    assert response.status_code == 200 and response["Content-Type"] == content_type
    assert b"openapi" in response.content


def test_the_schema_documents_the_pages_of_docker_info(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/builds/{id}/docker-info/"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["page"]["schema"]["default"] == 1 and parameters["page"]["schema"]["minimum"] == 1
    assert parameters["page_size"]["schema"] == {"type": "integer", "maximum": 1000, "minimum": 1, "default": 100}
    info = schema["components"]["schemas"]["DockerInfo"]
    assert set(info["required"]) == {"summary", "operations", "operations_count", "operations_next",
                                     "operations_previous", "pushed_images"}
    assert info["properties"]["operations_next"]["nullable"] is True
    assert "404" in operation["responses"]
