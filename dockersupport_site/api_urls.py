"""REST API v1 (token auth): builds, the connection test, the agent protocol, and the OpenAPI schema with
its documentation pages (Swagger UI, Redoc)."""

from django.urls import path, register_converter
from rest_framework.routers import SimpleRouter

from builds import agent_api
from builds.api import BuildViewSet
from builds.reported.api import ReportPushView
from connections.api import ConnectionTestView

from .api_docs import ApiRootView, RedocView, SchemaView, SwaggerView


class IdConverter:
    """An id in a path: at most 18 digits, so that it always fits a 64-bit key column."""

    regex = "[0-9]{1,18}"

    def to_python(self, value):
        return int(value)

    def to_url(self, value):
        return str(value)


register_converter(IdConverter, "id")

router = SimpleRouter()
router.register("builds", BuildViewSet, basename="build")

urlpatterns = [
    path("", ApiRootView.as_view(), name="api-root"),
    path("schema/", SchemaView.as_view(), name="api-schema"),
    # Who may read the schema may read these (SPECTACULAR_SETTINGS' SERVE_PERMISSIONS).
    path("docs/", SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", RedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("projects/<str:project>/connections/<str:connection>/test/", ConnectionTestView.as_view(),
         name="connection-test"),
    # Before the router's: `builds/<id>/` would take it. A build's report token (builds/reported/api.py).
    path("builds/pushes/", ReportPushView.as_view(), name="build-push-report"),
    *router.urls,
    # Agents on build hosts (agent and build tokens, see builds/agent_api.py).
    path("agent/connect/", agent_api.ConnectView.as_view(), name="agent-connect"),
    path("agent/heartbeat/", agent_api.HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/jobs/", agent_api.agent_jobs, name="agent-jobs"),
    path("agent/jobs/<id:pk>/", agent_api.JobResultView.as_view(), name="agent-job-result"),
    path("agent/builds/", agent_api.BuildStartView.as_view(), name="agent-build-start"),
    path("agent/builds/<id:pk>/credentials/", agent_api.BuildCredentialsView.as_view(), name="agent-build-credentials"),
    path("agent/builds/<id:pk>/logins/", agent_api.BuildLoginsView.as_view(), name="agent-build-logins"),
    path("agent/builds/<id:pk>/finish/", agent_api.BuildFinishView.as_view(), name="agent-build-finish"),
    path("agent/pushes/", agent_api.PushReportView.as_view(), name="agent-push-report"),
    path("agent/events/", agent_api.EventsView.as_view(), name="agent-events"),
    path("agent/images/", agent_api.TrackedImagesView.as_view(), name="agent-images"),
    path("agent/cleanups/", agent_api.CleanupReportView.as_view(), name="agent-cleanups"),
]
