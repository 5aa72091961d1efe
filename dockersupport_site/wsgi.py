"""WSGI entry point for production servers (e.g. `gunicorn dockersupport_site.wsgi`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dockersupport_site.settings")
application = get_wsgi_application()
