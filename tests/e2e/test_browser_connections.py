"""The connection form, and the project, connection and configuration pages, in a real browser at 1366 px.

The form shows only the chosen type's fields and switches them as the type (and ECR's credentials type) changes;
its Test connection button tests the values typed, against a real registry, before anything is saved. The pages
link to each other and fit the window; the login list's autocomplete offers only what the configuration's project
may use. Full-page screenshots are kept under test-output/ (connection-form-docker.png, connection-form-ecr.png,
project-page.png, configuration-page.png).
"""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.e2e.browser import log_in, overflow
from tests.e2e.conftest import ROOT
from tests.factories import (
    BuildConfigurationFactory,
    BuildFactory,
    EcrConnectionFactory,
    LoginConnectionFactory,
    ProjectFactory,
    RegistryConnectionFactory,
)

pytestmark = [pytest.mark.e2e]

OUTPUT = ROOT / "test-output"
USERNAME, PASSWORD = "forms-admin", "forms-admin-password-1"


def screenshot(page, name):
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


@pytest.fixture
def tree(registry, db):
    """org > acme > acme-web, another team, connections (one on the real registry), a configuration with logins."""
    org = ProjectFactory(ident="org", name="Organisation")
    acme = ProjectFactory(ident="acme", name="ACME", parent=org)
    web = ProjectFactory(ident="acme-web", name="ACME Web", parent=acme)
    other = ProjectFactory(ident="other-team", name="Other team")
    local = RegistryConnectionFactory(project=acme, ident="local", name="Local registry", registry=registry.address,
                                      username=registry.username, password=registry.password)
    hub = RegistryConnectionFactory(project=org, ident="hub", registry="", username="org-bot")
    ecr = EcrConnectionFactory(project=org, ident="ecr-prod", credentials="temporary",
                               role_arn="arn:aws:iam::123456789012:role/a-rather-long-role-name-for-ci-pushes",
                               registry_id="123456789012", region="eu-west-1")
    RegistryConnectionFactory(project=web, ident="web-only")
    RegistryConnectionFactory(project=other, ident="theirs")
    configuration = BuildConfigurationFactory(project=acme, ident="acme-app", name="ACME application image",
                                              keep_last=10, keep_days=30, cleanup_pushed_images=True)
    LoginConnectionFactory(configuration=configuration, connection=local)
    LoginConnectionFactory(configuration=configuration, connection=ecr, optional=True, position=1)
    for status in ("succeeded", "failed", "running"):
        BuildFactory(configuration=configuration, status=status)
    for n in range(3):
        BuildConfigurationFactory(project=web, ident=f"acme-web-service-{n}", name=f"Web service {n}")
    get_user_model().objects.create_superuser(USERNAME, password=PASSWORD)
    return {"acme": acme, "local": local, "hub": hub, "ecr": ecr, "configuration": configuration}


def test_the_connection_form_shows_only_the_chosen_types_fields(tree, live_server, open_page):
    from playwright.sync_api import expect

    add_url = live_server.url + reverse("admin:connections_connection_add") + f"?project={tree['acme'].pk}"
    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)
    page.goto(add_url)
    docker, ecr = page.locator("fieldset.ds-type-docker-registry"), page.locator("fieldset.ds-type-amazon-ecr")
    expect(page.locator("#id_type")).to_have_value("docker-registry")
    expect(docker).to_be_visible()
    expect(ecr).to_be_hidden()
    expect(page.locator("label", has_text="Registry address")).to_have_count(1)
    expect(page.locator(".field-registry .help")).to_contain_text(
        "empty means <registry ID>.dkr.ecr.<region>.amazonaws.com")
    expect(page.locator("#test-connection")).to_have_css("cursor", "pointer")
    assert overflow(page) == 0
    screenshot(page, "connection-form-docker.png")

    page.select_option("#id_type", "amazon-ecr")
    expect(docker).to_be_hidden()
    expect(ecr).to_be_visible()
    page.select_option("#id_credentials", "default-chain")
    for name in ("access_key_id", "secret_access_key", "role_arn", "external_id"):
        expect(page.locator(f".form-row.field-{name}")).to_be_hidden()
    page.select_option("#id_credentials", "temporary")
    for name in ("access_key_id", "secret_access_key", "role_arn", "external_id"):
        expect(page.locator(f".form-row.field-{name}")).to_be_visible()
    assert overflow(page) == 0
    screenshot(page, "connection-form-ecr.png")
    page.select_option("#id_type", "docker-registry")
    expect(ecr).to_be_hidden()
    expect(docker).to_be_visible()
    assert page.broken == [], page.broken


def test_the_test_button_tests_what_is_typed_and_saves_nothing(tree, registry, live_server, open_page):
    from playwright.sync_api import expect

    local = tree["local"]
    url = live_server.url + reverse("admin:connections_connection_change", args=[local.pk])
    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)
    page.goto(url)
    result = page.locator("#test-connection-result")
    page.click("#test-connection")
    expect(result).to_contain_text(f"✓ Logged in to {registry.address} (the registry answered /v2/ with 200 after "
                                   "authentication)")
    expect(result).to_contain_text("it asks for a login (HTTP 401 without credentials)")
    expect(result).not_to_contain_text(registry.password)
    page.fill("#id_password", "a-wrong-password-typed-here")
    page.click("#test-connection")
    expect(result).to_contain_text("credentials refused by")
    expect(page).to_have_url(url)  # the form stays as typed
    expect(page.locator("#id_password")).to_have_value("a-wrong-password-typed-here")
    page.fill("#id_password", "")
    page.fill("#id_registry", f"localhost:{registry.address.rsplit(':', 1)[1]}")  # the same registry, another name
    page.click("#test-connection")
    expect(result).to_contain_text("give the password again")
    # Nothing was saved: the page opened again shows the stored address, and the stored password still works.
    page.goto(url)
    expect(page.locator("#id_registry")).to_have_value(registry.address)
    page.click("#test-connection")
    expect(result).to_contain_text(f"✓ Logged in to {registry.address}")
    assert page.broken == [], page.broken


def test_project_connection_and_configuration_pages_link_to_each_other_and_fit(tree, live_server, open_page):
    from playwright.sync_api import expect

    acme = tree["acme"]
    urls = {name: live_server.url + reverse(f"admin:{name}_changelist") for name in (
        "connections_project", "connections_connection", "builds_buildconfiguration")}
    project_url = live_server.url + reverse("admin:connections_project_change", args=[acme.pk])
    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)

    page.goto(project_url)
    box = page.locator("fieldset.ds-links")
    expect(box).to_contain_text("ACME Web (acme-web)")
    expect(box).to_contain_text("org/ecr-prod (123456789012.dkr.ecr.eu-west-1.amazonaws.com) — inherited from "
                                "Organisation (org)")
    expect(box.get_by_role("link", name="Add a connection")).to_be_visible()
    assert overflow(page) == 0
    screenshot(page, "project-page.png")

    box.get_by_role("link", name="ACME application image (acme-app)").click()
    box = page.locator("fieldset.ds-links")
    expect(box).to_contain_text("3 builds (1 running, 1 failed, in error or lost)")
    expect(box).to_contain_text("org/ecr-prod (123456789012.dkr.ecr.eu-west-1.amazonaws.com, optional)")
    headings = [heading.lower() for heading in page.locator("#content-main h2").all_inner_texts()]
    docker_support = headings.index("docker support")
    assert headings[docker_support + 1].startswith("docker support: registry logins"), headings
    assert overflow(page) == 0
    screenshot(page, "configuration-page.png")

    # The login list's autocomplete: acme's and org's connections, not its subproject's nor another team's.
    page.locator(".add-row a").click()
    page.locator("#logins-2 .select2-selection").click()
    options = page.locator(".select2-results__option:not(.loading-results)")
    expect(options).to_have_text(["acme/local", "org/ecr-prod", "org/hub"])
    page.keyboard.press("Escape")

    box.get_by_role("link", name="3 builds").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    page.go_back()
    page.locator("fieldset.ds-links").get_by_role("link", name="acme/local").click()
    box = page.locator("fieldset.ds-links")
    expect(box).to_contain_text("ACME application image (acme-app) (project acme)")
    assert overflow(page) == 0
    box.get_by_role("link", name="ACME (acme)").click()
    expect(page).to_have_url(project_url)

    too_wide = {}
    for name, url in urls.items():
        page.goto(url)
        screenshot(page, f"{name.split('_')[1]}-list.png")  # project-list.png, connection-list.png, ...
        too_wide[name] = overflow(page)
    assert too_wide == dict.fromkeys(urls, 0)
    assert page.broken == [], page.broken
