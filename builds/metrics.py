"""Prometheus metrics of the product, next to django-prometheus' own (requests, latency, database).

Counts that live in the database (agents connected, builds running, jobs and event batches waiting,
clean-up outcomes) are read when Prometheus scrapes, so every server process answers the same;
`EVENTS_RECEIVED` counts in the process that received the batches.
"""

from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY

EVENTS_RECEIVED = Counter("dockersupport_events_received", "Docker operation records received from agents")
EVENT_BATCHES_RECEIVED = Counter("dockersupport_event_batches_received", "Event batches received from agents")


class ProductCollector:
    def describe(self):
        # Without it the registry calls collect() when the collector is registered, at start-up:
        # database queries before any migration ran.
        return []

    def collect(self):
        from .agents.selectors import connected_since
        from .models import Agent, AgentJob, Build, CleanupRun, EventBatch, PushedImage

        seen = connected_since()
        agents = GaugeMetricFamily("dockersupport_agents", "Agents, by whether they are connected",
                                   labels=["connected"])
        agents.add_metric(["yes"], Agent.objects.filter(last_seen_at__gte=seen).count())
        agents.add_metric(["no"], Agent.objects.exclude(last_seen_at__gte=seen).count())
        yield agents
        yield GaugeMetricFamily("dockersupport_agents_daemon_down", "Connected agents whose Docker daemon does "
                                "not answer",
                                value=Agent.objects.filter(last_seen_at__gte=seen, daemon_ok=False).count())
        yield GaugeMetricFamily("dockersupport_builds_running", "Builds running now",
                                value=Build.objects.filter(status=Build.Status.RUNNING).count())
        jobs = GaugeMetricFamily("dockersupport_agent_jobs", "Agent jobs waiting or taken", labels=["status"])
        waiting = AgentJob.objects.filter(status__in=[AgentJob.Status.PENDING, AgentJob.Status.CLAIMED])
        for status, count in waiting.values_list("status").annotate(n=Count("pk")).order_by():
            jobs.add_metric([status], count)
        yield jobs
        pending = EventBatch.objects.filter(ingested_at__isnull=True).aggregate(batches=Count("pk"),
                                                                                records=Sum("records"))
        yield GaugeMetricFamily("dockersupport_event_batches_waiting", "Event batches received, not ingested yet",
                                value=pending["batches"])
        yield GaugeMetricFamily("dockersupport_event_records_waiting", "Event records received, not ingested yet",
                                value=pending["records"] or 0)
        hour = EventBatch.objects.filter(ingested_at__gte=timezone.now() - timedelta(hours=1)).aggregate(
            records=Sum("records"))["records"]
        yield GaugeMetricFamily("dockersupport_event_records_ingested_last_hour",
                                "Event records ingested in the last hour (every server process agrees)",
                                value=hour or 0)
        images = GaugeMetricFamily("dockersupport_pushed_images", "Pushed images by clean-up status",
                                   labels=["cleanup_status"])
        for status, count in PushedImage.objects.values_list("cleanup_status").annotate(n=Count("pk")).order_by():
            images.add_metric([status], count)
        yield images
        totals = CleanupRun.objects.aggregate(deleted=Sum("images_deleted"), failed=Sum("images_failed"),
                                              kept=Sum("images_kept"), builds=Sum("builds_deleted"))
        outcomes = CounterMetricFamily("dockersupport_cleanup_images", "Registry clean-up outcomes of all runs",
                                       labels=["outcome"])
        for outcome in (PushedImage.CleanupStatus.DELETED, PushedImage.CleanupStatus.FAILED,
                        PushedImage.CleanupStatus.KEPT):
            outcomes.add_metric([outcome], totals[outcome] or 0)
        yield outcomes
        yield CounterMetricFamily("dockersupport_cleanup_builds_deleted", "Builds deleted by retention",
                                  value=totals["builds"] or 0)
        length = queue_length()
        if length is not None:
            yield GaugeMetricFamily("dockersupport_celery_queue_length", "Tasks waiting in the server queue",
                                    value=length)


def queue_length() -> int | None:
    """Messages waiting in the server's Celery queue (Redis broker only)."""
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.CELERY_BROKER_URL.startswith("redis"):
        return None
    try:
        with current_app.connection_for_read() as connection:
            return connection.default_channel.client.llen(settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:  # noqa: BLE001 - a broker away is the health check's to say
        return None


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(ProductCollector())
        _registered = True
