"""GET /health/ for load balancers: the database, the broker and the cache answer, or which does not.

Answered by a middleware at the top of the stack, before host validation and the HTTPS redirect:
a load balancer asks each server by its address, over plain HTTP. The answer names each check and
its outcome; never a host, a user or an error's text (those are in the server's log).
"""

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

log = logging.getLogger(__name__)
HEALTH_PATH = "/health/"


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _cache():
    cache.set("dockersupport:health", "ok", timeout=30)
    if cache.get("dockersupport:health") != "ok":
        raise RuntimeError("the cache did not give back what was just stored")


def _broker():
    from dockersupport_site.celery import app

    with app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=3)


def health_checks() -> dict[str, str]:
    checks = {"database": _database, "cache": _cache}
    results = {}
    if settings.CELERY_TASK_ALWAYS_EAGER:
        results["broker"] = "not used (tasks run in-process)"
    else:
        checks["broker"] = _broker
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the answer is "failing"
            log.warning("Health check %s failed: %s", name, exc)
            results[name] = f"failing ({type(exc).__name__})"
        else:
            results[name] = "ok"
    return results


def health_response() -> JsonResponse:
    results = health_checks()
    ok = all(not value.startswith("failing") for value in results.values())
    return JsonResponse({"status": "ok" if ok else "failing", "checks": results}, status=200 if ok else 503)


class HealthMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        if request.path == HEALTH_PATH:
            return health_response()
        return self.get_response(request)

    async def _acall(self, request):
        if request.path == HEALTH_PATH:
            return await sync_to_async(health_response)()
        return await self.get_response(request)
