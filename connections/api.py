"""REST API for connections: the connection test."""

import rules
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from . import roles
from .models import Connection
from .permissions import refusal
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
        if roles.role_on(request.user, target.project) is None:  # a project the caller cannot see
            raise NotFound(f"no connection '{target.ident}' in project '{target.project.ident}'")
        if not rules.has_perm("connections.test_connection", request.user, target):
            raise PermissionDenied(refusal(request.user, target.project, "test connections"))
        result = connection_test(target)
        return Response({"ok": result.ok, "verified": result.verified, "error": result.error})
