"""REST API for builds: start (logs in on the agent), finish (logs out), heartbeat, list.

Login and logout run as Celery tasks in the agent's own queue, on the build host; the API waits
for the answer up to DOCKERSUPPORT_AGENT_TASK_TIMEOUT seconds. Task messages carry ids only.
"""

from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from dockersupport_site.queues import Queue

from . import services, tasks
from .models import Agent, Build, BuildConfiguration, DockerOperation, PushedImage
from .selectors import build_operations, docker_info_summary


class BuildSerializer(serializers.ModelSerializer):
    configuration = serializers.SlugRelatedField(slug_field="ident", read_only=True)
    agent = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Build
        fields = ("id", "configuration", "agent", "number", "status", "started_at", "finished_at", "exit_code",
                  "pinned", "docker_config", "warnings", "error")
        read_only_fields = fields


class OperationSerializer(serializers.ModelSerializer):
    container = serializers.SerializerMethodField()

    class Meta:
        model = DockerOperation
        fields = ("time", "time_nano", "action", "event_type", "image", "tag", "digest", "container", "container_id",
                  "exit_code")

    def get_container(self, operation) -> str:
        return operation.container_name or operation.container_id


class PushedImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = PushedImage
        fields = ("registry", "repository", "tag", "digest", "reference", "pushed_at", "cleanup_status",
                  "cleanup_reason")


class DockerInfoSerializer(serializers.Serializer):
    summary = serializers.DictField()
    operations = OperationSerializer(many=True)
    pushed_images = PushedImageSerializer(many=True)


class BuildStartSerializer(serializers.Serializer):
    configuration = serializers.SlugRelatedField(slug_field="ident", queryset=BuildConfiguration.objects.all())
    agent = serializers.SlugRelatedField(slug_field="name", queryset=Agent.objects.all())
    number = serializers.IntegerField(min_value=1, required=False)


class BuildStartedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.IntegerField()
    docker_config = serializers.CharField(help_text="Export it as DOCKER_CONFIG for the build's Docker commands.")
    logged_in = serializers.ListField(child=serializers.CharField())
    warnings = serializers.ListField(child=serializers.CharField())


class BuildFinishSerializer(serializers.Serializer):
    exit_code = serializers.IntegerField()


_ERROR = inline_serializer("BuildError", {"detail": serializers.CharField(), "id": serializers.IntegerField()})


def _run_on_agent(task, build: Build, *args) -> dict | None:
    """Runs `task` in the build's agent queue and waits for it; None when no worker answered."""
    result = task.apply_async(args=[build.pk, *args], queue=Queue.for_agent(build.agent.name))
    try:
        return result.get(timeout=settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT, disable_sync_subtasks=False)
    except CeleryTimeoutError:
        return None


def _no_worker(build: Build, what: str) -> Response:
    queue = Queue.for_agent(build.agent.name)
    return Response({
        "id": build.pk,
        "detail": f"no worker of queue {queue} answered within {settings.DOCKERSUPPORT_AGENT_TASK_TIMEOUT} s "
                  f"({what}); run `celery -A dockersupport_site worker -Q {queue}` on the build host",
    }, status=status.HTTP_504_GATEWAY_TIMEOUT)


class BuildViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = BuildSerializer
    queryset = Build.objects.select_related("configuration", "agent").order_by("-started_at", "-pk")

    def get_queryset(self):
        queryset = super().get_queryset()
        configuration = self.request.query_params.get("configuration")
        number = self.request.query_params.get("number")
        if configuration:
            queryset = queryset.filter(configuration__ident=configuration)
        if number:
            if not number.isdigit():
                raise serializers.ValidationError({"number": f"'{number}' is not a build number"})
            queryset = queryset.filter(number=int(number))
        return queryset

    @extend_schema(parameters=[
        OpenApiParameter("configuration", str, description="a build configuration's id"),
        OpenApiParameter("number", int, description="a build number"),
    ])
    def list(self, request, *args, **kwargs):
        """Builds, newest first."""
        return super().list(request, *args, **kwargs)

    @extend_schema(request=BuildStartSerializer,
                   responses={201: BuildStartedSerializer, 400: _ERROR, 502: _ERROR, 504: _ERROR})
    def create(self, request):
        """Starts a build: logs in to its registries on the agent and answers its DOCKER_CONFIG."""
        start = BuildStartSerializer(data=request.data)
        start.is_valid(raise_exception=True)
        try:
            build = services.build_start(started_by=Build.StartedBy.API, **start.validated_data)
        except services.BuildStartError as exc:
            raise serializers.ValidationError({"number": [str(exc)]}) from None
        answer = _run_on_agent(tasks.build_login, build)
        if answer is None:
            services.build_abandon(build=build, reason="no agent worker logged the build in")
            return _no_worker(build, "login")
        if not answer["ok"]:
            return Response({"id": build.pk, "detail": answer["error"]}, status=status.HTTP_502_BAD_GATEWAY)
        payload = {"id": build.pk, "number": build.number, **{k: answer[k] for k in
                                                                ("docker_config", "logged_in", "warnings")}}
        return Response(BuildStartedSerializer(payload).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=BuildFinishSerializer, responses={200: BuildSerializer, 409: _ERROR, 504: _ERROR})
    @action(detail=True, methods=["post"])
    def finish(self, request, pk=None):
        """Logs the build out on its agent and closes it with the command's exit code."""
        build = self.get_object()
        finish = BuildFinishSerializer(data=request.data)
        finish.is_valid(raise_exception=True)
        if not build.is_running:
            return Response({"id": build.pk, "detail": f"build {build} is already {build.status}"},
                            status=status.HTTP_409_CONFLICT)
        if _run_on_agent(tasks.build_finish, build, finish.validated_data["exit_code"]) is None:
            return _no_worker(build, "logout is queued and runs when a worker takes it")
        build.refresh_from_db()
        return Response(BuildSerializer(build).data)

    @extend_schema(request=None, responses={200: BuildSerializer, 409: _ERROR})
    @action(detail=True, methods=["post"])
    def heartbeat(self, request, pk=None):
        """Tells that the build's process is alive (run_build does this by itself)."""
        build = self.get_object()
        if not build.is_running:
            return Response({"id": build.pk, "detail": f"build {build} is already {build.status}"},
                            status=status.HTTP_409_CONFLICT)
        services.build_heartbeat(build=build)
        build.refresh_from_db()
        return Response(BuildSerializer(build).data)

    @extend_schema(responses=DockerInfoSerializer, parameters=[
        OpenApiParameter("action", str, description="only operations with this action"),
        OpenApiParameter("image", str, description="only operations whose image name contains this"),
    ])
    @action(detail=True, methods=["get"], url_path="docker-info")
    def docker_info(self, request, pk=None):
        """The build's Docker Info: summary, every operation in time order, and the images it pushed."""
        build = self.get_object()
        operations = build_operations(build, request.query_params.get("action", ""),
                                      request.query_params.get("image", ""))
        return Response({
            "summary": docker_info_summary(build),
            "operations": OperationSerializer(operations.iterator(chunk_size=2000), many=True).data,
            "pushed_images": PushedImageSerializer(build.pushed_images.order_by("pushed_at", "pk"), many=True).data,
        })
