"""`python manage.py watch_docker_events --agent NAME`: record an agent's Docker operations for API-driven builds.

Runs on (or next to) the build host until stopped; each event goes to the agent's build that was
running at its time. Restarted, it resumes from the last event recorded for the agent.
"""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Max

from builds.models import Agent
from builds.recording import OperationRecorder


class Command(BaseCommand):
    help = "Record an agent's Docker operations and attribute them to its running builds (API-driven builds)."

    def add_arguments(self, parser):
        parser.add_argument("--agent", required=True, help="the agent whose daemon to watch")

    def handle(self, *args, agent, **options):
        try:
            host = Agent.objects.get(name=agent)
        except Agent.DoesNotExist:
            raise CommandError(f"--agent {agent}: no such agent") from None
        last = host.operations.aggregate(last=Max("time_nano"))["last"]
        recorder = OperationRecorder(host, since_nano=last)
        if not recorder.start():
            raise CommandError(recorder.error)
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        self.stdout.write(f"watching the Docker daemon of agent {host} ({host.effective_docker_host or 'DOCKER_HOST'})")
        self.stdout.flush()
        stopped.wait()
        recorder.stop()
        stats = recorder.stream.stats
        self.stdout.write(f"stopped: {stats.recorded} operations recorded, {stats.reconnects} reconnects")
