"""Build lifecycle without a daemon: numbering, dead builds logged out, expiring tokens refreshed."""

import base64
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from builds import services, tasks
from builds.docker.client_config import config_dir_create, config_write
from builds.models import Build
from connections.registries import RegistryCredentials
from dockersupport_site.celery import app
from tests.factories import (
    AgentFactory,
    BuildConfigurationFactory,
    BuildFactory,
    EcrConnectionFactory,
    LoginConnectionFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def config_root(tmp_path, settings):
    settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT = tmp_path / "configs"
    return settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT


def logged_in_build(config_root, servers=("r.test",), **fields):
    build = services.build_start(configuration=BuildConfigurationFactory(), agent=AgentFactory())
    path = config_dir_create(config_root, "b")
    config_write(path, [RegistryCredentials(server=server, username="u", password="old") for server in servers])
    Build.objects.filter(pk=build.pk).update(docker_config=str(path), **fields)
    build.refresh_from_db()
    return build


def test_builds_are_numbered_after_the_last_one():
    configuration, agent = BuildConfigurationFactory(), AgentFactory()
    numbers = [services.build_start(configuration=configuration, agent=agent).number for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert services.build_start(configuration=configuration, agent=agent, number=10).number == 10
    assert services.build_start(configuration=configuration, agent=agent).number == 11


def test_a_build_that_stopped_beating_is_logged_out(config_root):
    stale = timezone.now() - timedelta(hours=1)
    dead = logged_in_build(config_root, heartbeat_at=stale)
    alive = logged_in_build(config_root)
    assert tasks.logout_silent_builds.delay().get() == 1
    dead.refresh_from_db()
    assert (dead.status, dead.docker_config) == (Build.Status.ERROR, "")
    assert "no heartbeat" in dead.error
    alive.refresh_from_db()
    assert alive.is_running and alive.docker_config
    assert sorted(p.name for p in config_root.iterdir()) == [alive.docker_config.rsplit("/", 1)[1]]


def test_api_builds_get_the_longer_timeout(config_root, settings):
    stale = timezone.now() - timedelta(seconds=settings.DOCKERSUPPORT_HEARTBEAT_TIMEOUT + 60)
    build = logged_in_build(config_root, heartbeat_at=stale, started_by=Build.StartedBy.API)
    assert tasks.logout_silent_builds.delay().get() == 0
    build.refresh_from_db()
    assert build.is_running


def test_an_expiring_ecr_token_is_replaced_in_the_builds_config(config_root, moto_server):
    ecr_host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    build = logged_in_build(config_root, servers=[ecr_host], login_expires_at=timezone.now() + timedelta(minutes=10))
    LoginConnectionFactory(configuration=build.configuration, connection=EcrConnectionFactory(
        project=build.configuration.project, endpoint_url=moto_server.endpoint_url))
    # A login that failed at the start (optional) is not in the config and stays out of it.
    LoginConnectionFactory(configuration=build.configuration, optional=True)
    assert tasks.refresh_expiring_logins.delay().get() == 1
    auths = json.loads((config_root / build.docker_config.rsplit("/", 1)[1] / "config.json").read_text())["auths"]
    [(server, entry)] = auths.items()
    assert server == ecr_host
    assert base64.b64decode(entry["auth"]).decode() == "AWS:123456789012-auth-token"


def test_a_token_far_from_expiry_is_left_alone(config_root):
    build = logged_in_build(config_root, login_expires_at=timezone.now() + timedelta(hours=5))
    assert services.build_refresh_logins(build=build) is False


def test_task_names_are_stable():
    """Queued messages name tasks: renaming one strands the messages already queued."""
    names = {"builds.login", "builds.finish", "builds.logout", "builds.refresh_logins",
             "builds.logout_silent_builds", "builds.refresh_expiring_logins"}
    assert names <= set(app.tasks)


def test_periodic_tasks_are_scheduled_in_the_admin():
    scheduled = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {"builds.logout_silent_builds", "builds.refresh_expiring_logins"} <= scheduled


def test_retention_keeps_pinned_running_and_young_builds():
    configuration = BuildConfigurationFactory(keep_last=1, keep_days=10)
    now = timezone.now()
    old = {name: BuildFactory(configuration=configuration, started_at=now - timedelta(days=30 - i),
                              **{"status": "succeeded", **extra})
           for i, (name, extra) in enumerate([("deleted", {}), ("pinned", {"pinned": True}),
                                              ("running", {"status": "running"})])}
    young = BuildFactory(configuration=configuration, started_at=now - timedelta(days=2), status="failed")
    newest = BuildFactory(configuration=configuration, started_at=now, status="succeeded")
    call_command("cleanup_builds")
    assert set(Build.objects.filter(configuration=configuration)) == {old["pinned"], old["running"], young, newest}
