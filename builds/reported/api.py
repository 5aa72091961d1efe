"""POST /api/v1/builds/pushes/: a build's command reports a push with its own report token (report_push --server).

The token (`Authorization: Bearer dsr_...`, DOCKERSUPPORT_BUILD_TOKEN) opens this one call for its own build,
while the build runs; no user token opens it (a person cannot report a build's pushes for it).
"""

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from agent import protocol
from connections.authentication import bearer_token

from ..models import Build
from . import services

NOT_VALID = ("this build token is not valid: its build has finished, or it is not a build's token "
             "(DOCKERSUPPORT_BUILD_TOKEN of a running build)")


class ReportTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None or not token.startswith(protocol.REPORT_TOKEN_PREFIX):
            return None
        build = services.report_authenticate(token)
        if build is None:
            raise exceptions.AuthenticationFailed(NOT_VALID)
        return AnonymousUser(), build

    def authenticate_header(self, request):
        return 'Bearer realm="dockersupport build"'


class ReportTokenScheme(OpenApiAuthenticationExtension):
    target_class = "builds.reported.api.ReportTokenAuthentication"
    name = "buildReportToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A running build's report token (dsr_..., DOCKERSUPPORT_BUILD_TOKEN): reports that "
                               "build's pushes, nothing else."}


class IsReportingBuild(BasePermission):
    message = "a running build's report token (DOCKERSUPPORT_BUILD_TOKEN) is needed here"

    def has_permission(self, request, view):
        return isinstance(request.auth, Build)


class PushReportSerializer(serializers.Serializer):
    reference = serializers.CharField(max_length=services.REFERENCE_MAX, trim_whitespace=False,
                                      help_text="The image pushed: [registry/]repository:tag, or @digest.")
    digest = serializers.CharField(required=False, allow_blank=True, max_length=200, trim_whitespace=False,
                                   help_text="The digest pushed; left out, the registry's for the tag is recorded.")


class PushRecordedSerializer(serializers.Serializer):
    build = serializers.IntegerField()
    build_label = serializers.CharField()
    registry = serializers.CharField()
    repository = serializers.CharField()
    tag = serializers.CharField(allow_blank=True)
    digest = serializers.CharField()
    connection = serializers.CharField(help_text="The build's login connection the registry was read with.")
    verified_at = serializers.DateTimeField(help_text="When the registry was seen holding the digest.")
    recorded_before = serializers.BooleanField(help_text="The build had this push already.")


def refusal(exc: services.ReportRefused) -> Response:
    return Response({exc.field: [str(exc)]} if exc.field else {"detail": str(exc)}, status=exc.status)


class ReportPushView(APIView):
    authentication_classes = [ReportTokenAuthentication]
    permission_classes = [IsReportingBuild]

    @extend_schema(request=PushReportSerializer, responses={
        201: PushRecordedSerializer, 200: PushRecordedSerializer,
        400: OpenApiResponse(description="A bad reference or digest, a registry the build does not log in to, or a "
                                         "digest the registry does not hold: nothing is recorded."),
        401: OpenApiResponse(description="No report token, or its build is not running."),
        409: OpenApiResponse(description="The digest was in the registry before the build started (another build's "
                                         "push of it, or the registry's own push time says so)."),
        502: OpenApiResponse(description="The registry refused to say what it holds."),
        503: OpenApiResponse(description="The registry could not be reached: report it again."),
    })
    def post(self, request):
        """Records a push the build's Docker daemon never saw (buildx, kaniko, buildah, podman), once the registry
        holds it: in the build's Docker Info, and cleaned up like its other pushes."""
        report = PushReportSerializer(data=request.data)
        report.is_valid(raise_exception=True)
        try:
            image, before = services.push_report(build=request.auth, **report.validated_data)
        except services.ReportRefused as exc:
            return refusal(exc)
        answer = protocol.to_json(services.push_recorded(image, before))
        return Response(answer, status=status.HTTP_200_OK if before else status.HTTP_201_CREATED)
