"""Top-level URLs: the admin and the REST API."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.autodiscover()  # admin.site is dockersupport_site.admin_site.AdminSite

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("", include("django_prometheus.urls")),  # /metrics, for Prometheus (restrict it at the proxy)
    path("admin/", admin.site.urls),
    path("api/v1/", include("dockersupport_site.api_urls")),
]
