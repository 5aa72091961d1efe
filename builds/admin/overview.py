"""The admin index's overview (what needs an eye now, by role) and its server clean-up buttons: dry run and run now.

Server clean-up is site-wide: only those who may record clean-up runs (superusers, builds/permissions.py) see the
buttons or may post to them.
"""

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from ..cleanup.registry import deletions_waiting, retention_plan
from ..models import Build, CleanupRun, PushedImage
from ..overview import FAILED, overview_for
from ..tasks import cleanup_builds

PLAN_SHOWN = 200  # builds listed on the dry run's page; the totals count them all


def may_clean_up(request) -> bool:
    return request.user.has_perm("builds.add_cleanuprun")


def _list_url(name: str, **filters) -> str:
    return reverse(f"admin:builds_{name}_changelist") + (f"?{urlencode(filters)}" if filters else "")


def overview_context(request) -> dict:
    """What the index's overview shows `request.user`, with its links."""
    overview = overview_for(request.user)
    images = {"build__isempty": "1"}
    return {
        "overview": overview,
        "overview_links": {
            "running": _list_url("build", status__exact=Build.Status.RUNNING),
            "failures": _list_url("build", status__in=",".join(FAILED),
                                  finished_at__gte=overview.since.isoformat(sep=" ")),
            "pending": _list_url("pushedimage", **images, cleanup_status__exact=PushedImage.CleanupStatus.PENDING),
            "failed_deletions": _list_url("pushedimage", **images,
                                          cleanup_status__exact=PushedImage.CleanupStatus.FAILED),
            "agents": _list_url("agent") if overview.sees_agents else "",
            "cleanup_runs": _list_url("cleanuprun") if overview.sees_agents else "",
        },
        "may_clean_up": may_clean_up(request),
    }


def server_cleanup_urls(site) -> list:
    def dry_run(request):
        """The plan of a clean-up run now: builds retention deletes, with their images; changes nothing."""
        if not may_clean_up(request):
            raise PermissionDenied
        plan = retention_plan()
        context = {
            **site.each_context(request), "title": "Server clean-up: dry run", "opts": CleanupRun._meta,
            "plan": plan[:PLAN_SHOWN], "builds": len(plan),
            "images": sum(1 for entry in plan for planned in entry.images if not planned.kept),
            "impossible": sum(1 for entry in plan for planned in entry.images
                              if not planned.kept and not planned.connections),
            "pending": deletions_waiting()[PushedImage.CleanupStatus.PENDING],
        }
        return TemplateResponse(request, "admin/builds/cleanuprun/dry_run.html", context)

    def run_now(request):
        """Queues the clean-up task (beat's own); in embedded mode (no broker) it runs before the answer."""
        if not may_clean_up(request):
            raise PermissionDenied
        transaction.on_commit(lambda: cleanup_builds.delay(trigger=CleanupRun.Trigger.ADMIN))
        messages.success(request, "Server clean-up queued: its run is listed here once a worker has done it.")
        return redirect("admin:builds_cleanuprun_changelist")

    return [
        path("server-cleanup/dry-run/", site.admin_view(require_POST(dry_run)), name="server_cleanup_dry_run"),
        path("server-cleanup/run/", site.admin_view(require_POST(run_now)), name="server_cleanup_run"),
    ]
