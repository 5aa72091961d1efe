"""The admin app with our site (admin_site.AdminSite). Apart from it: an app's config loads before any model."""

from django.contrib.admin.apps import SimpleAdminConfig


class AdminConfig(SimpleAdminConfig):
    """SimpleAdminConfig: admin modules load with the URLs (urls.py), not in every process."""

    default_site = "dockersupport_site.admin_site.AdminSite"
