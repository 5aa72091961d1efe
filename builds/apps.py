from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    verbose_name = "Builds"

    def ready(self):
        from . import metrics, permissions

        metrics.register()
        permissions.register()
