"""ASGI entry point for production servers (e.g. `uvicorn dockersupport_site.asgi:application`).

Agents wait for work with a long-poll (builds/agent_api.py `agent_jobs`, an async view): under an
ASGI server a waiting agent holds no worker thread.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dockersupport_site.settings")
application = get_asgi_application()
