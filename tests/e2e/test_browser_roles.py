"""A project admin in a real browser sees only their team's configurations and connections.

alice administers team-a; team-b is another team's. She logs in through the admin's login form on
pytest-django's live server, lists the build configurations, opens team-a's and opens the registry
login's autocomplete, which offers team-a's connections only. Debian's chromium, headless, driven by
Playwright through tests/e2e/browser.py's `open_page` (never a downloaded browser).
"""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from connections.models import Membership
from tests.factories import BuildConfigurationFactory, ProjectFactory, RegistryConnectionFactory

pytestmark = [pytest.mark.e2e]

USERNAME, PASSWORD = "alice", "alice-browser-password-1"


def test_a_project_admin_sees_only_their_teams_configurations_and_connections(live_server, open_page):
    from playwright.sync_api import expect

    team_a, team_b = ProjectFactory(ident="team-a", name="Team A"), ProjectFactory(ident="team-b", name="Team B")
    for project in (team_a, team_b):
        BuildConfigurationFactory(ident=f"app-{project.ident}", name=f"App of {project.ident}", project=project)
        for n in (1, 2):
            RegistryConnectionFactory(ident=f"reg-{project.ident}-{n}", project=project)
    alice = get_user_model().objects.create_user(USERNAME, password=PASSWORD)  # no staff flag: a member
    Membership.objects.create(project=team_a, user=alice, role=Membership.Role.ADMIN)
    configurations_url = live_server.url + reverse("admin:builds_buildconfiguration_changelist")
    # No database query from here on: Playwright's event loop runs in this thread.
    page = open_page()

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/admin/")

    page.goto(configurations_url)
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("app-team-a")
    expect(page.locator("#result_list")).not_to_contain_text("app-team-b")

    rows.first.locator("th a").click()
    expect(page.locator("#id_ident")).to_have_value("app-team-a")
    page.locator(".add-row a").click()  # "Add another registry login"
    page.locator("#logins-0 .select2-selection").click()
    options = page.locator(".select2-results__option:not(.loading-results)")
    expect(options).to_have_text(["team-a/reg-team-a-1", "team-a/reg-team-a-2"])
    page.keyboard.type("team-b")
    expect(options).to_have_text(["No results found"])
    assert page.broken == [], page.broken
