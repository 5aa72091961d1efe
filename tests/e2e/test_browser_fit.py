"""Every admin page fits a 1366 px laptop screen: no page of the admin is wider than the window.

A superuser opens every registered model's list, add page and the change page of a row, on data with
the long values real use brings (a 120-character image reference, a 64-character image ID, long
names), in Debian's chromium at 1366 x 900 (tests/e2e/browser.py). A page that overflows is named with
how many pixels it is too wide, and a screenshot of it is kept under test-output/fit/.
"""

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from agent.events import parse_event
from builds.models import (
    AgentCleanup,
    AgentImage,
    Build,
    CleanupRun,
    PushedImage,
    SetAsideRecord,
    UnattributedOperation,
)
from tests.e2e.browser import log_in, overflow, too_wide
from tests.e2e.conftest import ROOT
from tests.factories import BuildFactory, EcrConnectionFactory, LoginConnectionFactory, ingest

pytestmark = [pytest.mark.e2e]

USERNAME, PASSWORD = "fit-admin", "fit-admin-password-1"
SHOTS = ROOT / "test-output" / "fit"
T0 = 1_790_000_000_000_000_000
LONG_REPOSITORY = "127.0.0.1:5000/" + "/".join(["platform-team-with-a-long-name"] * 3)
IMAGE_ID = "sha256:" + "c" * 64


def event(kind, action, actor, seconds, **attributes):
    return parse_event({"Type": kind, "Action": action, "timeNano": T0 + int(seconds * 1e9),
                        "Actor": {"ID": actor, "Attributes": attributes}})


def realistic_rows():
    """One of each thing the admin lists, with long values where real ones are long."""
    login = LoginConnectionFactory(
        configuration__ident="a-build-configuration-with-a-long-identifier",
        configuration__name="Nightly integration build of the platform team's services",
        configuration__project__ident="platform-team", connection__registry="127.0.0.1:5000")
    configuration = login.configuration
    EcrConnectionFactory(project=configuration.project, ident="ecr-production-eu-west-1")
    build = BuildFactory(configuration=configuration, started_at=timezone.now(),
                         logged_in_registries=["127.0.0.1:5000"], attribution=Build.Attribution.TIME,
                         attribution_note="its configuration turned exact attribution off: " + "x" * 400,
                         warnings=["anonymous pull of busybox:latest from docker.io: "
                                   "logged-in pulls count against a higher rate limit"])
    ingest(build, [
        event("image", "pull", "busybox:latest", 0, name="busybox"),
        event("image", "tag", IMAGE_ID, 1, name=f"{LONG_REPOSITORY}:1.0.0-rc.1"),
        event("image", "push", f"{LONG_REPOSITORY}:1.0.0-rc.1", 2, name=LONG_REPOSITORY),
        event("container", "create", "a" * 64, 3, name="integration-tests", image=IMAGE_ID),
        event("container", "start", "a" * 64, 3.5, name="integration-tests", image=IMAGE_ID),
        event("container", "die", "a" * 64, 9, name="integration-tests", image=IMAGE_ID, exitCode="3"),
    ])
    PushedImage.objects.create(build=build, configuration_ident=configuration.ident, project=configuration.project,
                               build_number=build.number,
                               registry="127.0.0.1:5000", repository=LONG_REPOSITORY.split("/", 1)[1],
                               tag="1.0.0-rc.1-with-a-long-suffix", digest="sha256:" + "d" * 64,
                               pushed_at=timezone.now())
    now = timezone.now()
    CleanupRun.objects.create(trigger=CleanupRun.Trigger.SCHEDULE, started_at=now, finished_at=now,
                              builds_deleted=3, images_deleted=2, images_failed=1,
                              details=[{"image": f"{LONG_REPOSITORY}@sha256:{'d' * 64}", "outcome": "failed",
                                        "reason": "the registry refused the deletion (HTTP 405)"}])
    assert AgentImage.objects.filter(agent=build.agent).exists()  # tracked from the operations
    AgentCleanup.objects.create(agent=build.agent, at=now, reason="build needs 10 GiB", data_path="/var/lib/docker",
                                required_bytes=10 << 30, free_before=2 << 30, free_after=12 << 30,
                                bytes_reclaimed=10 << 30, removed=[f"{LONG_REPOSITORY}:1.0.0-rc.1"], met=True)
    SetAsideRecord.objects.create(agent=build.agent, first_seq=1, record={"action": "x" * 300},
                                  error="value too long for type character varying(100)", at=now)
    UnattributedOperation.objects.create(  # shown on the agent's page
        agent=build.agent, time=now, time_nano=T0, event_type="container", action="create", raw_action="create",
        image=LONG_REPOSITORY, tag="1.0.0-rc.1-with-a-long-suffix", container_id="e" * 64,
        container_name="a-container-someone-started-by-hand-on-the-build-host", identity="f" * 64)


def admin_pages(user):
    """(name, url) of every model's list, add page (where the user may add) and the change page of its first row."""
    request = RequestFactory().get("/admin/")
    request.user = user
    pages = [("index", reverse("admin:index"))]
    for model, model_admin in admin.site._registry.items():
        info = model._meta.app_label, model._meta.model_name
        pages.append((f"{info[0]}.{info[1]} list", reverse("admin:{}_{}_changelist".format(*info))))
        if model_admin.has_add_permission(request):
            pages.append((f"{info[0]}.{info[1]} add", reverse("admin:{}_{}_add".format(*info))))
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            pages.append((f"{info[0]}.{info[1]} change",
                          reverse("admin:{}_{}_change".format(*info), args=[first.pk])))
    return pages


def test_every_admin_page_fits_1366_px(live_server, open_page):
    realistic_rows()
    pages = admin_pages(get_user_model().objects.create_superuser(USERNAME, "fit@example.com", PASSWORD))
    assert len(pages) > 30, pages  # every model of the admin, not a handful

    page = open_page()
    log_in(page, live_server, USERNAME, PASSWORD)
    SHOTS.mkdir(parents=True, exist_ok=True)
    wide, broken = {}, {}
    for name, url in pages:
        response = page.goto(live_server.url + url)
        if response.status >= 400:
            broken[name] = response.status
            continue
        extra = overflow(page)
        if extra:
            wide[name] = (extra, too_wide(page))
            page.screenshot(path=str(SHOTS / f"{name.replace(' ', '-')}.png"), full_page=True)
    assert not broken, f"pages that fail: {broken}"
    assert not wide, f"pages wider than 1366 px (by px, and why; screenshots in {SHOTS}): {wide}"
