"""The dockersupport Django project: settings, URLs and the Celery app (`dockersupport_site.celery`).

As in Celery's Django recipe, the app is made here, so that every process with these settings
sends tasks through it; the apps' tasks are `shared_task`s and import nothing of this package.
(run_build and the agent run without Django: see manage.py.)
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
