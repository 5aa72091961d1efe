"""Reads about builds from start to finish."""

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from ..models import Build, BuildConfiguration


def builds_silent(now=None) -> QuerySet[Build]:
    """API-driven running builds that neither finished nor beat within DOCKERSUPPORT_API_BUILD_TIMEOUT.

    (run_build's builds are kept alive by their agent's heartbeat; an agent that goes silent has its
    builds lost by agents.services.agents_silent_mark_lost.)
    """
    now = now or timezone.now()
    limit = now - timedelta(seconds=settings.DOCKERSUPPORT_API_BUILD_TIMEOUT)
    return Build.objects.filter(status=Build.Status.RUNNING, started_by=Build.StartedBy.API,
                                heartbeat_at__lt=limit).select_related("agent", "configuration")


def configuration_get(ident: str) -> BuildConfiguration:
    try:
        return BuildConfiguration.objects.select_related("project").get(ident=ident)
    except BuildConfiguration.DoesNotExist:
        known = ", ".join(BuildConfiguration.objects.values_list("ident", flat=True)[:20]) or "none yet"
        raise BuildConfiguration.DoesNotExist(f"no build configuration '{ident}' (known: {known})") from None
