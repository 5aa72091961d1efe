"""Build lifecycle on the server: numbering, builds nobody will finish closed as lost, task names,
schedules, retention."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from builds import tasks
from builds.login import services
from builds.models import Agent, AgentJob, Build
from dockersupport_site.celery import app
from tests.factories import AgentFactory, BuildConfigurationFactory, BuildFactory

pytestmark = pytest.mark.django_db


def test_builds_are_numbered_after_the_last_one():
    configuration, agent = BuildConfigurationFactory(), AgentFactory()
    numbers = [services.build_start(configuration=configuration, agent=agent).number for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert services.build_start(configuration=configuration, agent=agent, number=10).number == 10
    assert services.build_start(configuration=configuration, agent=agent).number == 11


def test_the_builds_of_a_silent_agent_are_lost(settings):
    silent, alive = AgentFactory(), AgentFactory()
    long_ago = timezone.now() - timedelta(seconds=settings.DOCKERSUPPORT_AGENT_TIMEOUT + 60)
    Agent.objects.filter(pk=silent.pk).update(last_seen_at=long_ago)
    Agent.objects.filter(pk=alive.pk).update(last_seen_at=timezone.now())
    lost = BuildFactory(agent=silent, started_at=long_ago)
    running = BuildFactory(agent=alive, started_at=long_ago)
    assert tasks.logout_silent_builds.delay().get() == 1
    lost.refresh_from_db()
    running.refresh_from_db()
    assert lost.status == Build.Status.LOST and "was silent" in lost.error
    assert running.is_running


def test_an_api_build_that_stops_beating_is_lost_and_its_agent_logs_it_out(settings):
    agent = AgentFactory()
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())
    stale = timezone.now() - timedelta(seconds=settings.DOCKERSUPPORT_API_BUILD_TIMEOUT + 60)
    build = BuildFactory(agent=agent, started_by=Build.StartedBy.API, heartbeat_at=stale)
    fresh = BuildFactory(agent=agent, started_by=Build.StartedBy.API, heartbeat_at=timezone.now())
    assert tasks.logout_silent_builds.delay().get() == 1
    build.refresh_from_db()
    assert build.status == Build.Status.LOST
    [job] = AgentJob.objects.all()
    assert (job.kind, job.build, job.agent) == (AgentJob.Kind.LOGOUT, build, agent)
    assert "no finish and no heartbeat" in job.payload["lost"]
    fresh.refresh_from_db()
    assert fresh.is_running


# Every task of ours, by name: queued messages and the admin's schedules name tasks, so renaming one
# strands the messages already queued and breaks the schedules. A new task is added here on purpose.
TASK_NAMES = {"builds.logout_silent_builds", "builds.ingest_event_batch", "builds.cleanup_builds",
              "builds.retry_pending_deletions"}


def test_every_task_name_is_pinned():
    ours = {name for name in app.tasks if not name.startswith("celery.")}
    assert ours == TASK_NAMES


def test_the_schedules_name_pinned_tasks_and_are_in_the_admin():
    scheduled = set(PeriodicTask.objects.exclude(task__startswith="celery.").values_list("task", flat=True))
    assert scheduled == {"builds.logout_silent_builds", "builds.cleanup_builds", "builds.retry_pending_deletions"}
    assert scheduled <= TASK_NAMES


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


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_keep_last_n_keeps_exactly_the_n_newest_builds(keep_last):
    configuration = BuildConfigurationFactory(keep_last=keep_last)
    now = timezone.now()
    # Started in another order than numbered: the newest by start time are kept.
    builds = [BuildFactory(configuration=configuration, number=number, status="succeeded",
                           started_at=now - timedelta(hours=hours))
              for number, hours in ((1, 50), (2, 10), (3, 40), (4, 20), (5, 30))]
    newest_first = sorted(builds, key=lambda b: b.started_at, reverse=True)
    call_command("cleanup_builds")
    assert set(Build.objects.filter(configuration=configuration)) == set(newest_first[:keep_last])
