"""Settings for processes on build hosts that only log builds in and out (run_build).

The same configuration as `settings`, without the server-only apps (admin, API, beat): a CI pays
for run_build's start-up on every build step, and those apps' import cost is most of it.
"""

from .settings import *  # noqa: F401,F403
from .settings import INSTALLED_APPS

SERVER_ONLY_APPS = {
    "django.contrib.admin.apps.SimpleAdminConfig", "django.contrib.auth", "django.contrib.sessions",
    "django.contrib.messages", "django.contrib.staticfiles", "rest_framework", "rest_framework.authtoken",
    "drf_spectacular", "django_celery_beat",
}
INSTALLED_APPS = [app for app in INSTALLED_APPS if app not in SERVER_ONLY_APPS]
