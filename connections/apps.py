from django.apps import AppConfig


class ConnectionsConfig(AppConfig):
    name = "connections"
    verbose_name = "Projects and connections"

    def ready(self):
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            permissions,
        )

        permissions.register()
