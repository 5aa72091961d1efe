"""REST API for connections: the connection test."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Connection
from .selectors import connection_get
from .services import connection_test

_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}


class ConnectionPathSerializer(serializers.Serializer):
    """The path's identifiers. A CharField refuses NUL characters: no identifier holds one, and
    PostgreSQL answers a text containing one with an error instead of no match."""

    project = serializers.CharField(trim_whitespace=False)
    connection = serializers.CharField(trim_whitespace=False)


class ConnectionTestView(APIView):
    @extend_schema(request=None, responses={
        200: inline_serializer("ConnectionTest", {
            "ok": serializers.BooleanField(),
            "verified": serializers.ListField(child=serializers.CharField()),
            "error": serializers.CharField(),
        }),
        400: OpenApiResponse(
            response={"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            description="A path identifier no project or connection can have (each named, with what is wrong).",
        ),
        401: OpenApiResponse(_DETAIL, description="Not authenticated."),
        403: OpenApiResponse(_DETAIL, description="Not allowed."),
        404: OpenApiResponse(_DETAIL, description="No such connection in that project."),
    })
    def post(self, request, project, connection):
        """Gets the connection's credentials and has its registry accept them; says what was verified."""
        path = ConnectionPathSerializer(data={"project": project, "connection": connection})
        path.is_valid(raise_exception=True)
        try:
            target = connection_get(path.validated_data["project"], path.validated_data["connection"])
        except Connection.DoesNotExist as exc:
            raise NotFound(str(exc)) from None
        result = connection_test(target)
        return Response({"ok": result.ok, "verified": result.verified, "error": result.error})
