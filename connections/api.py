"""REST API for connections: the connection test."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Connection
from .selectors import connection_get
from .services import connection_test


class ConnectionTestView(APIView):
    @extend_schema(request=None, responses=inline_serializer("ConnectionTest", {
        "ok": serializers.BooleanField(),
        "verified": serializers.ListField(child=serializers.CharField()),
        "error": serializers.CharField(),
    }))
    def post(self, request, project, connection):
        """Gets the connection's credentials and has its registry accept them; says what was verified."""
        try:
            target = connection_get(project, connection)
        except Connection.DoesNotExist as exc:
            raise NotFound(str(exc)) from None
        result = connection_test(target)
        return Response({"ok": result.ok, "verified": result.verified, "error": result.error})
