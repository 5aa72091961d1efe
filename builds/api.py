"""REST API for builds: start (logs in on the agent), finish (logs out), heartbeat, list.

Login and logout are jobs of the build's agent, which pulls them (the agent protocol); the API
waits for the agent's answer up to DOCKERSUPPORT_AGENT_TASK_TIMEOUT seconds.
"""

import logging

import rules
from django.conf import settings
from django.db.backends.base.operations import BaseDatabaseOperations
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from connections import roles
from connections.permissions import refusal

from .login import services as login
from .models import Agent, Build, BuildConfiguration, DockerOperation, PushedImage
from .operations.selectors import build_operations, build_pushed_images, docker_info_summary
from .reported.services import report_token_issue

log = logging.getLogger(__name__)

# What the columns hold on PostgreSQL (Django's portable ranges). SQLite would store more, so the API
# bounds numbers itself: a value out of range is a 400 naming the field, never a database error.
_RANGES = BaseDatabaseOperations.integer_field_ranges
BUILD_NUMBER_MAX = _RANGES["PositiveIntegerField"][1]
EXIT_CODE_MIN, EXIT_CODE_MAX = _RANGES["IntegerField"]
# docker-info answers its operations a page at a time: 10,000 of them at once were 3.4 MB.
OPERATIONS_PAGE_SIZE = 100
OPERATIONS_PAGE_SIZE_MAX = 1000
OPERATIONS_PAGE_MAX = _RANGES["PositiveIntegerField"][1]


def _whole_number(what: str, low: int, high: int, **kwargs) -> serializers.IntegerField:
    message = f"{what} is a whole number from {low} to {high}"
    return serializers.IntegerField(min_value=low, max_value=high, error_messages={
        "invalid": message, "min_value": message, "max_value": message, "max_string_length": message,
    }, **kwargs)


class _IdentRelatedField(serializers.SlugRelatedField):
    """A lookup by identifier that refuses NUL characters before asking the database: no identifier
    holds one, and PostgreSQL answers a text containing one with an error instead of no match."""

    default_error_messages = {"null_characters": "Null characters are not allowed."}

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("null_characters")
        return super().to_internal_value(data)


class BuildPagination(LimitOffsetPagination):
    # Bounded so that a huge ?limit= cannot overflow the database's LIMIT (a larger one is clamped, as
    # DRF does); a huge ?offset= is past the count, which DRF answers with an empty page, unqueried.
    max_limit = 1000
    limit_query_description = f"Number of results to return per page (at most {max_limit})."


class BuildSerializer(serializers.ModelSerializer):
    configuration = serializers.SlugRelatedField(slug_field="ident", read_only=True)
    agent = serializers.SlugRelatedField(slug_field="name", read_only=True)
    warnings = serializers.ListField(child=serializers.CharField(), read_only=True)
    # Declared: a read-only model field loses its blank value from the schema's enum.
    attribution = serializers.ChoiceField(
        choices=[*Build.Attribution.choices, ("", "not reported")], read_only=True,
        help_text="How the build's Docker operations were told from other builds': `exact` (from its own Docker "
                  "endpoint's requests), `time` (by time: pushes while other builds ran have an uncertain owner), "
                  "or empty (not reported yet, or by an older agent).")

    class Meta:
        model = Build
        fields = ("id", "configuration", "agent", "number", "status", "started_at", "finished_at", "exit_code",
                  "pinned", "docker_config", "warnings", "error", "attribution")
        read_only_fields = fields


class OperationSerializer(serializers.ModelSerializer):
    container = serializers.SerializerMethodField()

    class Meta:
        model = DockerOperation
        fields = ("time", "time_nano", "action", "event_type", "image", "tag", "digest", "container", "container_id",
                  "exit_code", "reported")

    def get_container(self, operation) -> str:
        return operation.container_name or operation.container_id


class PushedImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = PushedImage
        fields = ("registry", "repository", "tag", "digest", "reference", "pushed_at", "cleanup_status",
                  "cleanup_reason", "owner_uncertain", "owner_note", "reported")


# The two below only describe, in the schema, the dict that selectors.docker_info_summary answers.
class ContainerSerializer(serializers.Serializer):
    """A container the build ran."""

    id = serializers.CharField()
    name = serializers.CharField()
    image = serializers.CharField(help_text="The image it ran, by the name the build's own pull, build or tag gave "
                                            "it when it was created from an image ID.")
    image_id = serializers.CharField(allow_blank=True, required=False,
                                     help_text="The image ID it was created from, when it was created from an ID.")
    exit_code = serializers.IntegerField(allow_null=True)
    seconds = serializers.FloatField(allow_null=True, help_text="From its start to its end; null when its start "
                                                                "was not recorded.")
    failed = serializers.BooleanField()


class DockerInfoSummarySerializer(serializers.Serializer):
    """What the build did with Docker, in figures."""

    operation_count = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Operations by action.")
    images_pulled = serializers.ListField(child=serializers.CharField())
    images_built = serializers.ListField(child=serializers.CharField())
    images_pushed = serializers.ListField(child=serializers.CharField())
    containers = ContainerSerializer(many=True)
    containers_failed = serializers.IntegerField()
    seconds_in_containers = serializers.FloatField()
    warnings = serializers.ListField(child=serializers.CharField())


class DockerInfoSerializer(serializers.Serializer):
    summary = DockerInfoSummarySerializer(help_text="The whole build, whatever the page and the filters.")
    operations = OperationSerializer(many=True, help_text="One page of the operations that match the filters, in "
                                                          "time order (`page`, `page_size`).")
    operations_count = serializers.IntegerField(help_text="How many operations match the filters, on all pages.")
    operations_next = serializers.URLField(allow_null=True, help_text="The next page of operations; null on the "
                                                                      "last page.")
    operations_previous = serializers.URLField(allow_null=True, help_text="The previous page of operations; null "
                                                                          "on the first page.")
    pushed_images = PushedImageSerializer(many=True, help_text="Every image the build pushed.")


class BuildFilterSerializer(serializers.Serializer):
    """The list's query parameters."""

    configuration = serializers.CharField(required=False, trim_whitespace=False,
                                          help_text="a build configuration's id")
    number = _whole_number("a build number", 1, BUILD_NUMBER_MAX, required=False, help_text="a build number")


class DockerInfoFilterSerializer(serializers.Serializer):
    """The Docker Info's query parameters."""

    action = serializers.ChoiceField(choices=DockerOperation.Action.choices, required=False, allow_blank=True,
                                     help_text="only operations with this action")
    image = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                  help_text="only operations whose image name contains this")
    page = _whole_number("a page number", 1, OPERATIONS_PAGE_MAX, required=False, default=1,
                         help_text="which page of the operations (from 1)")
    page_size = _whole_number("a page size", 1, OPERATIONS_PAGE_SIZE_MAX, required=False,
                              default=OPERATIONS_PAGE_SIZE,
                              help_text=f"operations a page (default {OPERATIONS_PAGE_SIZE}, at most "
                                        f"{OPERATIONS_PAGE_SIZE_MAX})")


class BuildStartSerializer(serializers.Serializer):
    # A configuration of a project the caller cannot see does not exist for them.
    configuration = _IdentRelatedField(slug_field="ident", queryset=BuildConfiguration.objects.none())
    agent = _IdentRelatedField(slug_field="name", queryset=Agent.objects.all())
    number = _whole_number("a build number", 1, BUILD_NUMBER_MAX, required=False)

    def __init__(self, *args, user=None, **kwargs):  # no user: the schema's description
        super().__init__(*args, **kwargs)
        if user is not None:
            self.fields["configuration"].queryset = BuildConfiguration.objects.select_related("project").filter(
                project__in=roles.projects_with(user))


class BuildStartedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.IntegerField()
    docker_config = serializers.CharField(help_text="Export it as DOCKER_CONFIG for the build's Docker commands.")
    docker_host = serializers.CharField(
        allow_blank=True,
        help_text="Export it as DOCKER_HOST for the build's Docker commands: the build's own Docker endpoint on its "
                  "agent (exact attribution), or the agent's daemon.")
    logged_in = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField())
    build_token = serializers.CharField(
        help_text="Answered once: export it as DOCKERSUPPORT_BUILD_TOKEN for the build's command, whose "
                  "`manage.py report_push` reports pushes its Docker daemon never saw (buildx, kaniko, buildah, "
                  "podman); it opens nothing else and ends with the build.")


def build_started_payload(build: Build, result: dict) -> dict:
    """The answer to a start from the login result of the build's agent; an older agent's has no docker_host."""
    docker_host = result.get("docker_host")
    return {"id": build.pk, "number": build.number, "docker_host": docker_host if isinstance(docker_host, str) else "",
            **{key: result[key] for key in ("docker_config", "logged_in", "warnings")}}


class BuildFinishSerializer(serializers.Serializer):
    exit_code = _whole_number("an exit code", EXIT_CODE_MIN, EXIT_CODE_MAX)


class BuildErrorSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The build's id.")
    detail = serializers.CharField()


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


# DRF's answers to bad input: a serializer's errors map each field (`non_field_errors` for the body as a
# whole) to its messages; a body that cannot be parsed at all gets a `detail`.
_FIELD_ERRORS = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "example": {"number": [f"a build number is a whole number from 1 to {BUILD_NUMBER_MAX}"]},
}
_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
BAD_REQUEST = OpenApiResponse(
    response={"oneOf": [_FIELD_ERRORS, _DETAIL]},
    description="Bad input: each bad field (query parameter or body field) with what is wrong with it.",
)
NOT_FOUND = OpenApiResponse(DetailSerializer, description="No such build.")
NO_PAGE = OpenApiResponse(DetailSerializer, description="No such build, or no such page of its operations (the "
                                                        "message says how many pages there are).")
# Every operation: no or a wrong token (401), a session without its CSRF token (403).
AUTH = {401: OpenApiResponse(DetailSerializer, description="Not authenticated."),
        403: OpenApiResponse(DetailSerializer, description="Not allowed.")}
NOT_RUNNING = OpenApiResponse(BuildErrorSerializer, description="The build is not running.")
NO_WORKER = OpenApiResponse(BuildErrorSerializer, description="The build's agent did not answer in time.")


def _require(request, perm: str, obj, project, doing: str) -> None:
    """A 403 naming the caller's role unless `perm` allows it on `obj` (the caller can see its project).

    rules' own has_perm, not the user's: a superuser's token narrowed to some projects or to reading
    is narrowed here too."""
    if not rules.has_perm(perm, request.user, obj):
        raise PermissionDenied(refusal(request.user, project, doing))


def _failed_on_agent(build: Build, answer: login.AgentAnswer) -> Response:
    """The agent's failure (502), or its silence (504) with what to do about it."""
    if answer.error:
        return Response({"id": build.pk, "detail": answer.error}, status=status.HTTP_502_BAD_GATEWAY)
    return _no_agent(build, answer.unanswered)


def _no_agent(build: Build, what: str) -> Response:
    seen = (f"last seen {build.agent.last_seen_at:%Y-%m-%d %H:%M:%S %Z}" if build.agent.last_seen_at
            else "never connected")
    return Response({
        "id": build.pk,
        "detail": f"agent {build.agent} did not answer within {settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT} s ({what}; "
                  f"{seen}); run `python manage.py agent --server URL --token-file FILE` on its build host",
    }, status=status.HTTP_504_GATEWAY_TIMEOUT)


def _not_running(build: Build) -> Response:
    return Response({"id": build.pk, "detail": f"build {build} has already finished ({build.status})"},
                    status=status.HTTP_409_CONFLICT)


def _operations_page(request, operations, page: int, size: int) -> dict:
    """One page of `operations` with their total and the links to the pages beside it; NotFound past the last."""
    count = operations.count()
    last = max(1, -(-count // size))
    if page > last:
        raise NotFound(f"page {page} of the operations does not exist: there are {count} operations, {size} a page, "
                       f"so {last} page{'s' if last != 1 else ''}")
    url = request.build_absolute_uri()

    def link(number):
        if number == 1:
            return remove_query_param(url, "page")
        return replace_query_param(url, "page", number)

    rows = operations[(page - 1) * size:page * size]
    return {
        "operations": OperationSerializer(rows, many=True).data,
        "operations_count": count,
        "operations_next": link(page + 1) if page < last else None,
        "operations_previous": link(page - 1) if page > 1 else None,
    }


class BuildViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = BuildSerializer
    pagination_class = BuildPagination
    # Any path segment reaches the view, so a malformed id is the API's JSON 404, not Django's HTML page.
    lookup_value_regex = "[^/]+"
    queryset = Build.objects.select_related("configuration", "agent").order_by("-started_at", "-pk")

    def get_queryset(self):
        # Builds of projects the caller cannot see do not exist for them (404).
        queryset = super().get_queryset().filter(configuration__project__in=roles.projects_with(self.request.user))
        if self.action != "list":  # the filters are the list's; a build is found by its id alone
            return queryset
        filters = BuildFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        if "configuration" in filters.validated_data:
            queryset = queryset.filter(configuration__ident=filters.validated_data["configuration"])
        if "number" in filters.validated_data:
            queryset = queryset.filter(number=filters.validated_data["number"])
        return queryset

    @extend_schema(parameters=[BuildFilterSerializer], responses={200: BuildSerializer, 400: BAD_REQUEST, **AUTH})
    def list(self, request, *args, **kwargs):
        """Builds, newest first."""
        return super().list(request, *args, **kwargs)

    @extend_schema(responses={200: BuildSerializer, 404: NOT_FOUND, **AUTH})
    def retrieve(self, request, *args, **kwargs):
        """One build."""
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(request=BuildStartSerializer, responses={
        201: BuildStartedSerializer, 400: BAD_REQUEST, **AUTH,
        502: OpenApiResponse(BuildErrorSerializer, description="A required login failed (the message names the "
                                                               "connection), or the agent's task failed."),
        504: NO_WORKER,
    })
    def create(self, request):
        """Starts a build: its agent logs it in to its registries; answers its DOCKER_CONFIG and DOCKER_HOST."""
        start = BuildStartSerializer(data=request.data, user=request.user)
        start.is_valid(raise_exception=True)
        configuration = start.validated_data["configuration"]
        _require(request, "builds.start_build", configuration, configuration.project, "start builds")
        try:
            build, answer = login.build_start_remote(**start.validated_data,
                                                     timeout=settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT)
        except login.BuildStartError as exc:
            raise serializers.ValidationError({exc.field: [str(exc)]}) from None
        if not answer.done:
            return _failed_on_agent(build, answer)
        payload = {**build_started_payload(build, answer.result), "build_token": report_token_issue(build)}
        return Response(BuildStartedSerializer(payload).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=BuildFinishSerializer, responses={
        200: BuildSerializer, 400: BAD_REQUEST, **AUTH, 404: NOT_FOUND, 409: NOT_RUNNING,
        502: OpenApiResponse(BuildErrorSerializer, description="The agent's logout failed; try again."),
        504: NO_WORKER,
    })
    @action(detail=True, methods=["post"])
    def finish(self, request, pk=None):
        """Logs the build out on its agent and closes it with the command's exit code."""
        build = self.get_object()
        finish = BuildFinishSerializer(data=request.data)
        finish.is_valid(raise_exception=True)
        _require(request, "builds.finish_build", build, build.configuration.project, "finish builds")
        if not build.is_running:
            return _not_running(build)
        answer = login.build_finish_remote(build=build, exit_code=finish.validated_data["exit_code"],
                                           timeout=settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT)
        if not answer.done:
            return _failed_on_agent(build, answer)
        return Response(BuildSerializer(build).data)

    @extend_schema(request=None, responses={200: BuildSerializer, **AUTH, 404: NOT_FOUND, 409: NOT_RUNNING})
    @action(detail=True, methods=["post"])
    def heartbeat(self, request, pk=None):
        """Tells that the build's process is alive (run_build does this by itself)."""
        build = self.get_object()
        _require(request, "builds.finish_build", build, build.configuration.project, "keep builds alive")
        if not build.is_running:
            return _not_running(build)
        login.build_heartbeat(build=build)
        build.refresh_from_db()
        return Response(BuildSerializer(build).data)

    @extend_schema(parameters=[DockerInfoFilterSerializer], responses={
        200: DockerInfoSerializer, 400: BAD_REQUEST, **AUTH, 404: NO_PAGE,
    })
    @action(detail=True, methods=["get"], url_path="docker-info")
    def docker_info(self, request, pk=None):
        """The build's Docker Info: its summary, one page of its operations in time order (with their count and
        the links to the next and previous pages beside them), and every image it pushed."""
        build = self.get_object()
        filters = DockerInfoFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        query = filters.validated_data
        operations = build_operations(build, query.get("action", ""), query.get("image", ""))
        page = _operations_page(request, operations, query["page"], query["page_size"])
        return Response({
            "summary": docker_info_summary(build),
            **page,
            "pushed_images": PushedImageSerializer(build_pushed_images(build), many=True).data,
        })
