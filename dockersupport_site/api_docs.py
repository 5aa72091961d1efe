"""The REST API's own pages: its root (links to everything else), the OpenAPI schema readable in a
browser, and Swagger UI and Redoc served from our static files (drf-spectacular-sidecar, no CDN)."""

from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.utils import extend_schema, inline_serializer
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView


class _YamlAsText(OpenApiYamlRenderer):
    """The same YAML, as text a browser shows instead of saving."""

    media_type = "text/plain"
    charset = "utf-8"


class SchemaView(SpectacularAPIView):
    """The schema at one URL for tools and people: YAML as `application/vnd.oai.openapi` (or what the
    Accept header asks for) to curl and tools, as text/plain to a browser (which asks for text/html
    first); `?format=json` is application/json, which browsers show too."""

    # application/json before the vendor type: ?format=json picks the first JSON renderer.
    renderer_classes = [OpenApiYamlRenderer, OpenApiYamlRenderer2, OpenApiJsonRenderer2, OpenApiJsonRenderer]

    def perform_content_negotiation(self, request, force=False):
        renderer, media_type = super().perform_content_negotiation(request, force)
        accept = request.META.get("HTTP_ACCEPT", "")
        if type(renderer) is OpenApiYamlRenderer and "text/html" in accept and "openapi" not in accept:
            return _YamlAsText(), _YamlAsText.media_type
        return renderer, media_type


# The docs pages load only from this server: their browser refuses anything else (Redoc's footer shows a
# logo from cdn.redoc.ly, which no option removes). Inline styles: both libraries style with them; blob:
# workers: Redoc's search.
DOCS_CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'", "img-src 'self' data:",
    "font-src 'self' data:", "worker-src 'self' blob:", "connect-src 'self'", "object-src 'none'",
    "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'",
))


class _OwnFilesOnly:
    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return response


class SwaggerView(_OwnFilesOnly, SpectacularSwaggerSplitView):
    """Swagger UI; the split view serves its start-up script at ?script, so the page has no inline script."""


class RedocView(_OwnFilesOnly, SpectacularRedocView):
    # drf-spectacular's page without its Google Fonts links.
    template_name = "api/redoc.html"


class ApiRootView(APIView):
    """The API's entry points. The same for everyone (like the schema and the docs): links only."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="api_root", tags=["api"], responses={200: inline_serializer("ApiRoot", {
        "builds": serializers.URLField(help_text="Builds, newest first; POST starts one."),
        "schema": serializers.URLField(help_text="The OpenAPI schema (YAML; ?format=json for JSON)."),
        "docs": serializers.URLField(help_text="Swagger UI: the schema to read and try out."),
        "redoc": serializers.URLField(help_text="Redoc: the schema to read."),
    })})
    def get(self, request):
        """Links to the builds, the OpenAPI schema and its documentation pages."""
        return Response({name: reverse(url_name, request=request) for name, url_name in (
            ("builds", "build-list"), ("schema", "api-schema"), ("docs", "api-docs"), ("redoc", "api-redoc"))})
