"""Recording a daemon's Docker operations: its event stream, in batches, into the ingest task.

run_build records its own build (`build` given); an agent's watcher (`watch_docker_events`)
records everything and lets ingestion give each event to the build running at its time.
"""

import logging

from django.conf import settings

from dockersupport_site.queues import Queue

from .docker.daemon import DaemonError, daemon_client
from .docker.events import EventStream, daemon_time_nano
from .models import Agent, Build

log = logging.getLogger(__name__)


class OperationRecorder:
    def __init__(self, agent: Agent, build: Build | None = None, since_nano: int | None = None):
        self.agent, self.build, self.since_nano = agent, build, since_nano
        self._results = []
        self.stream: EventStream | None = None
        self.error = ""
        self._client = None

    def _deliver(self, records: list[dict]) -> None:
        # Imported here, in the writer thread: Celery loads only once there is something to record,
        # while the build's command runs (run_build's start-up stays lean).
        from .tasks import ingest_events

        args = [self.agent.pk, records, self.build.pk if self.build else None]
        self._results.append(ingest_events.apply_async(args=args, queue=Queue.SERVER))

    def _daemon_now(self) -> int:
        if self._client is None:
            self._client = daemon_client(self.agent.effective_docker_host)
        return daemon_time_nano(self._client)

    def start(self) -> bool:
        """Opens the event stream; False (and `error`) when the daemon cannot be reached."""
        try:
            since = self.since_nano if self.since_nano is not None else self._daemon_now()
        except (DaemonError, OSError) as exc:
            self.error = f"Docker operations are not recorded: {exc}"
            return False
        self.stream = EventStream(self.agent.effective_docker_host, since, self._deliver)
        self.stream.start()
        return True

    def stop(self, timeout: float = 60) -> None:
        """Closes the stream once the daemon delivered every event up to now, and waits for ingestion."""
        if self.stream is None:
            return
        try:
            until = self._daemon_now()
        except (DaemonError, OSError):
            until = self.stream.last_nano  # the daemon is gone: take what was read
        self.stream.stop(until, timeout=timeout)
        if self._client is not None:
            self._client.close()
        if settings.CELERY_TASK_ALWAYS_EAGER or settings.CELERY_RESULT_BACKEND:
            for result in self._results:
                try:
                    result.get(timeout=timeout, disable_sync_subtasks=False)
                except Exception as exc:  # noqa: BLE001 - reported, the build itself goes on
                    self.stream.stats.errors.append(f"a batch of operations was not recorded: {exc}")
        self._results.clear()
