"""The dockersupport Django project: settings, URLs and the Celery app (`dockersupport_site.celery`).

The Celery app is not imported here, unlike Celery's usual Django recipe: task modules import it
themselves, so that processes that enqueue nothing (run_build, once per CI build step) start
without loading Celery. `celery -A dockersupport_site` finds `dockersupport_site.celery`.
"""
