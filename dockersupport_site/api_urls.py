"""REST API v1 (token auth): builds, the connection test, and the OpenAPI schema."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from builds.api import BuildViewSet
from connections.api import ConnectionTestView

router = SimpleRouter()
router.register("builds", BuildViewSet, basename="build")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("projects/<str:project>/connections/<str:connection>/test/", ConnectionTestView.as_view(),
         name="connection-test"),
    *router.urls,
]
