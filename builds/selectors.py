"""Reads about builds."""

from datetime import timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .models import Build, BuildConfiguration


def builds_silent(now=None) -> QuerySet[Build]:
    """Running builds that stopped beating: their process is taken as dead."""
    now = now or timezone.now()
    run_build_limit = now - timedelta(seconds=settings.DOCKERSUPPORT_HEARTBEAT_TIMEOUT)
    api_limit = now - timedelta(seconds=settings.DOCKERSUPPORT_API_BUILD_TIMEOUT)
    return Build.objects.filter(status=Build.Status.RUNNING).filter(
        Q(started_by=Build.StartedBy.RUN_BUILD, heartbeat_at__lt=run_build_limit)
        | Q(started_by=Build.StartedBy.API, heartbeat_at__lt=api_limit)
    ).select_related("agent", "configuration")


def builds_needing_token_refresh(now=None) -> QuerySet[Build]:
    """Running builds whose earliest registry token (ECR) expires within REFRESH_LEAD."""
    from connections.registries.credentials import REFRESH_LEAD

    now = now or timezone.now()
    return Build.objects.filter(
        status=Build.Status.RUNNING, login_expires_at__lte=now + REFRESH_LEAD,
    ).exclude(docker_config="").select_related("agent")


def configuration_get(ident: str) -> BuildConfiguration:
    try:
        return BuildConfiguration.objects.select_related("project").get(ident=ident)
    except BuildConfiguration.DoesNotExist:
        known = ", ".join(BuildConfiguration.objects.values_list("ident", flat=True)[:20]) or "none yet"
        raise BuildConfiguration.DoesNotExist(f"no build configuration '{ident}' (known: {known})") from None
