"""The agent protocol under /api/v1/agent/: what agents on build hosts ask of the server.

An agent authenticates with its own token (`Authorization: Bearer dsa_...`) and sees only its own
work; a build's later requests use that build's token (`Bearer dsb_...`), which opens that build
and nothing else, only while it runs. Every request names its protocol version in
PROTOCOL_HEADER; a version the server does not speak is refused with 426 and what it speaks.
Messages are the dataclasses of `agent.protocol`, validated and documented through
djangorestframework-dataclasses.

The job poll is a long-poll: an async view, so that waiting agents hold no worker thread of an
ASGI server (see `agent_jobs`).
"""

import asyncio
import functools
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import JsonResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_dataclasses.serializers import DataclassSerializer

from agent import protocol
from connections.authentication import bearer_token

from . import metrics, tasks
from .agents import services as agents
from .cleanup.agent import agent_cleanup_record, agent_images_tracked
from .login import services as login
from .models import Agent, Build, DockerOperation
from .operations import records
from .operations.services import events_receive
from .reported import services as reported

REVOKED = ("this agent token is not valid: it was revoked or replaced; make a new one on the server with "
           "`python manage.py agent_token NAME`")


class UpgradeRequired(exceptions.APIException):
    status_code = 426
    default_code = "protocol"


def protocol_problem(request) -> str:
    """Why the server cannot talk with this agent, or ''."""
    sent = request.headers.get(protocol.PROTOCOL_HEADER, "")
    if sent == str(protocol.PROTOCOL_VERSION):
        return ""
    said = f"speaks protocol {sent}" if sent else f"sent no {protocol.PROTOCOL_HEADER} header"
    return (f"this agent {said}; this server speaks agent protocol {protocol.PROTOCOL_VERSION}: run the agent of "
            "the server's release")


class AgentTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None or not token.startswith(protocol.AGENT_TOKEN_PREFIX):
            return None
        agent = agents.agent_authenticate(token)
        if agent is None:
            raise exceptions.AuthenticationFailed(REVOKED)
        return AnonymousUser(), agent

    def authenticate_header(self, request):
        return 'Bearer realm="dockersupport agent"'


class BuildTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None or not token.startswith(protocol.BUILD_TOKEN_PREFIX):
            return None
        build = agents.build_authenticate(token)
        if build is None:
            raise exceptions.AuthenticationFailed("this build token is not valid: the build has ended")
        return AnonymousUser(), build

    def authenticate_header(self, request):
        return 'Bearer realm="dockersupport build"'


class IsAgent(BasePermission):
    message = "an agent's token is needed here"

    def has_permission(self, request, view):
        return isinstance(request.auth, Agent)


class IsThisBuild(BasePermission):
    """The build token of the build in the URL, and no other."""

    message = "a build's token opens that build only"

    def has_permission(self, request, view):
        return isinstance(request.auth, Build) and str(request.auth.pk) == str(view.kwargs.get("pk"))


class _Text(serializers.CharField):
    """A message's text: empty is a value, and whitespace is kept."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_blank", True)
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)


class _Number(serializers.IntegerField):
    """A message's whole number: at most what a 64-bit column holds (tighter bounds are the views')."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", -(2 ** 63) + 1)
        kwargs.setdefault("max_value", 2 ** 63 - 1)
        super().__init__(**kwargs)


class MessageSerializer(DataclassSerializer):
    serializer_field_mapping = {**DataclassSerializer.serializer_field_mapping, str: _Text, int: _Number}

    @property
    def serializer_dataclass_field(self):
        return MessageSerializer


def body(dataclass, request):
    serializer = MessageSerializer(dataclass=dataclass, data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def answer(message, code=status.HTTP_200_OK) -> Response:
    return Response(protocol.to_json(message), status=code)


@functools.cache
def doc(dataclass):
    """The message's serializer for the schema, named Agent<Message> (they read as one protocol there)."""
    meta = type("Meta", (), {"dataclass": dataclass, "ref_name": f"Agent{dataclass.__name__}"})
    return type(f"Agent{dataclass.__name__}Serializer", (MessageSerializer,), {"Meta": meta})


class AgentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "builds.agent_api.AgentTokenAuthentication"
    name = "agentToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The agent's own token (dsa_...)."}


class BuildTokenScheme(OpenApiAuthenticationExtension):
    target_class = "builds.agent_api.BuildTokenAuthentication"
    name = "buildToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A running build's own token (dsb_...): that build's requests only."}


ERRORS = {
    400: OpenApiResponse(description="A field of the request is wrong; each is named with what is wrong."),
    401: OpenApiResponse(description="No token, or one that was revoked or replaced: the agent stops."),
    403: OpenApiResponse(description="The token may not do this (another agent's or another build's)."),
    404: OpenApiResponse(description="No such job of this agent, or no such path."),
    426: OpenApiResponse(description="The agent speaks another protocol version than the server."),
}


class AgentView(APIView):
    authentication_classes = [AgentTokenAuthentication]
    permission_classes = [IsAgent]

    def initial(self, request, *args, **kwargs):
        problem = protocol_problem(request)
        if problem:
            raise UpgradeRequired(problem)
        super().initial(request, *args, **kwargs)

    @property
    def agent(self) -> Agent:
        return self.request.auth


class BuildView(AgentView):
    authentication_classes = [BuildTokenAuthentication]
    permission_classes = [IsThisBuild]

    @property
    def build(self) -> Build:
        return self.request.auth


class ConnectView(AgentView):
    @extend_schema(request=doc(protocol.ConnectRequest), responses={200: doc(protocol.AgentSettings), **ERRORS})
    def post(self, request):
        """An agent starts: it says what it is, and learns its settings. Jobs it had taken are offered again."""
        return answer(agents.agent_connect(agent=self.agent, hello=body(protocol.ConnectRequest, request)))


class HeartbeatView(AgentView):
    @extend_schema(request=doc(protocol.HeartbeatRequest), responses={200: doc(protocol.HeartbeatAnswer), **ERRORS})
    def post(self, request):
        """The agent is alive, with its daemon's state and the builds it runs."""
        beat = body(protocol.HeartbeatRequest, request)
        if beat.free_bytes is not None and not 0 <= beat.free_bytes <= protocol.MAX_SIZE:
            raise serializers.ValidationError({"free_bytes": [f"a size is from 0 to {protocol.MAX_SIZE} bytes"]})
        return answer(agents.agent_heartbeat(agent=self.agent, beat=beat))


class BuildStartView(AgentView):
    @extend_schema(request=doc(protocol.BuildStartRequest), responses={201: doc(protocol.BuildStarted), **ERRORS})
    def post(self, request):
        """run_build starts a build through its agent: the build, its token and its registry credentials."""
        start = body(protocol.BuildStartRequest, request)
        if start.number is not None and not 1 <= start.number <= login.BUILD_NUMBER_MAX:
            raise serializers.ValidationError({"number": [f"a build number is from 1 to {login.BUILD_NUMBER_MAX}"]})
        try:
            started = login.build_start_on_agent(agent=self.agent, configuration_ident=start.configuration,
                                                 number=start.number)
        except login.BuildStartError as exc:
            raise serializers.ValidationError({"configuration": [str(exc)]}) from None
        return answer(started, status.HTTP_201_CREATED)


class BuildCredentialsView(BuildView):
    @extend_schema(responses={200: doc(protocol.Credentials), **ERRORS})
    def get(self, request, pk):
        """The build's registry credentials, fresh (an ECR token from the shared cache or from AWS)."""
        return answer(protocol.Credentials(logins=login.build_credentials(self.build),
                                           exact_attribution=self.build.configuration.exact_attribution))


class BuildLoginsView(BuildView):
    @extend_schema(request=doc(protocol.LoginReport), responses={200: OpenApiResponse(), **ERRORS})
    def post(self, request, pk):
        """What the agent's daemon made of the build's logins; a failed required login ends the build."""
        login.build_login_report(build=self.build, report=body(protocol.LoginReport, request))
        return Response({"status": self.build.status})


class BuildFinishView(BuildView):
    @extend_schema(request=doc(protocol.FinishRequest), responses={200: doc(protocol.FinishAnswer), **ERRORS})
    def post(self, request, pk):
        """The build ended (or was lost): closed once its operations are ingested; answers its summary."""
        finish = body(protocol.FinishRequest, request)
        if finish.exit_code is None and not finish.lost:
            raise serializers.ValidationError({"exit_code": ["give the exit code, or `lost` with the reason"]})
        if finish.exit_code is not None and not -2 ** 31 <= finish.exit_code < 2 ** 31:
            raise serializers.ValidationError({"exit_code": ["an exit code is from -2147483648 to 2147483647"]})
        return answer(login.build_close(build=self.build, exit_code=finish.exit_code, lost=finish.lost,
                                        events_through=finish.events_through, logins=finish.logins))


# Records are checked here, quickly, rather than field by field through a serializer: batches of
# hundreds arrive all the time. Texts are kept as sent (up to a bound that holds any secret whole) until
# ingestion has masked the builds' secrets in them, and only then cut to their columns
# (operations/records.py): a secret cut in two here would show its first half, and a name cut here would
# look whole to ingestion. Docker's `exec_start: <the whole command line>` may be longer: up to
# RAW_ACTION_RECEIVED.
RAW_ACTION_RECEIVED = 65_536
TEXT_RECEIVED = 8_192  # longer than any secret we hand out (an ECR token is about 2.5 kB)
_TEXT_LIMITS = {**{name: max(limit, TEXT_RECEIVED) for name, limit in records.TEXT_LIMITS.items()},
                "raw_action": RAW_ACTION_RECEIVED}
# How the agent attributed a record, besides the builds it names: `owner_uncertain`, by time while other builds
# ran on the daemon (its push's owner is uncertain); `unattributed` (with no build named), no build's own Docker
# endpoint asked for it (kept on the agent's page).
RECORD_FLAGS = ("owner_uncertain", "unattributed")


def _without_nul(value):
    """NUL characters and lone surrogates out of every text of the attributes (labels are anyone's):
    PostgreSQL refuses them."""
    return records.value_clean(value)


def _checked_records(records_sent: list) -> list[dict]:
    checked = []
    for i, record in enumerate(records_sent):
        def wrong(what):
            return serializers.ValidationError({"records": [f"records[{i}].{what}"]})

        if not isinstance(record, dict):
            raise wrong("(record): expected an object")
        clean = {}
        for name, limit in _TEXT_LIMITS.items():
            value = record.get(name, "")
            if not isinstance(value, str) or "\x00" in value:
                raise wrong(f"{name}: expected a text without NUL characters")
            clean[name] = records.text_clean(value[:limit])
        if clean["action"] not in DockerOperation.Action.values:
            raise wrong(f"action: '{clean['action'][:20]}' is not an operation")
        time_nano, exit_code = record.get("time_nano"), record.get("exit_code")
        if not isinstance(time_nano, int) or isinstance(time_nano, bool) or not 0 < time_nano < 2 ** 63:
            raise wrong("time_nano: expected nanoseconds since the epoch")
        if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)
                                      or not -2 ** 31 <= exit_code < 2 ** 31):
            raise wrong("exit_code: expected a whole number or null")
        builds, attributes = record.get("builds"), _without_nul(record.get("attributes", {}))
        if not isinstance(builds, list) or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 < b < 2 ** 63 for b in builds):
            raise wrong("builds: expected a list of build ids")
        if not isinstance(attributes, dict):
            raise wrong("attributes: expected an object")
        flags = {}
        for name in RECORD_FLAGS:
            value = record.get(name, False)
            if not isinstance(value, bool):
                raise wrong(f"{name}: expected true or false")
            if value:
                flags[name] = True  # kept only when set: batches wait in the database until ingested
        checked.append({**clean, "time_nano": time_nano, "exit_code": exit_code, "builds": builds,
                        "attributes": attributes, **flags})
    return checked


class PushReportView(AgentView):
    @extend_schema(request=doc(protocol.PushReport), responses={201: doc(protocol.PushRecorded), **ERRORS})
    def post(self, request):
        """A push a build's command reported (report_push), relayed with the build's report token: recorded once its
        registry holds it (builds/reported/). A refusal records nothing."""
        report = body(protocol.PushReport, request)
        build = reported.report_authenticate(report.token)
        if build is None:
            # Not a 401: that would tell the agent its own token was revoked.
            raise exceptions.PermissionDenied("this build token is not valid: its build has finished, or it is not "
                                              "a build's token (DOCKERSUPPORT_BUILD_TOKEN of a running build)")
        try:
            image, before = reported.push_report(build=build, reference=report.reference, digest=report.digest,
                                                 agent=self.agent)
        except reported.ReportRefused as exc:
            return Response({exc.field: [str(exc)]} if exc.field else {"detail": str(exc)}, status=exc.status)
        return answer(reported.push_recorded(image, before),
                      status.HTTP_200_OK if before else status.HTTP_201_CREATED)


class EventsView(AgentView):
    @extend_schema(request=doc(protocol.EventBatch), responses={200: doc(protocol.EventAck), **ERRORS})
    def post(self, request):
        """A batch of the daemon's operations, each naming the builds it belongs to; acknowledged once held."""
        batch = body(protocol.EventBatch, request)
        if len(batch.records) > 2 * protocol.EVENT_BATCH_SIZE:
            raise serializers.ValidationError({"records": [f"at most {2 * protocol.EVENT_BATCH_SIZE} records a batch"]})
        batch.records = _checked_records(batch.records)
        metrics.EVENT_BATCHES_RECEIVED.inc()
        metrics.EVENTS_RECEIVED.inc(len(batch.records))
        try:
            held = events_receive(agent=self.agent, batch=batch, ingest=tasks.ingest_event_batch.delay)
        except ValidationError as exc:
            raise serializers.ValidationError({"last_seq": exc.messages}) from None
        return answer(protocol.EventAck(acked=held))


class JobResultView(AgentView):
    @extend_schema(request=doc(protocol.JobResult), responses={200: OpenApiResponse(), **ERRORS})
    def post(self, request, pk):
        """The outcome of a job the agent took."""
        if not agents.job_complete(agent=self.agent, job_id=pk, outcome=body(protocol.JobResult, request)):
            raise exceptions.NotFound(f"job {pk} is not a job this agent has taken")
        return Response({"ok": True})


class TrackedImagesView(AgentView):
    @extend_schema(responses={200: doc(protocol.TrackedImages), **ERRORS})
    def get(self, request):
        """Images builds created or pulled on this agent, with their last use (Free Disk Space candidates)."""
        return answer(protocol.TrackedImages(images=agent_images_tracked(self.agent)))


class CleanupReportView(AgentView):
    @extend_schema(request=doc(protocol.CleanupReport), responses={201: OpenApiResponse(), **ERRORS})
    def post(self, request):
        """A Free Disk Space run on the agent: recorded, and the removed images are no longer tracked."""
        report = body(protocol.CleanupReport, request)
        problems = {name: [f"a size is from 0 to {protocol.MAX_SIZE} bytes"]
                    for name in ("required_bytes", "free_before", "free_after")
                    if not 0 <= getattr(report, name) <= protocol.MAX_SIZE}
        if not all(isinstance(item, dict) and isinstance(item.get("references", []), list)
                   and all(isinstance(r, str) for r in item.get("references", [])) for item in report.removed):
            problems["removed"] = ['expected [{"image", "references": [text...], "size", "freed"}]']
        if problems:
            raise serializers.ValidationError(problems)
        agent_cleanup_record(agent=self.agent, report=report)
        return Response({"ok": True}, status=status.HTTP_201_CREATED)


# --- The job long-poll ---------------------------------------------------------------------------------

class AgentJobsSchema(AgentView):
    """Documents `agent_jobs` in the OpenAPI schema (the view itself is async, outside DRF)."""

    @extend_schema(parameters=[
        OpenApiParameter("wait", int, description=(
            "seconds to wait for work when there is none yet (at most DOCKERSUPPORT_AGENT_JOB_WAIT)")),
        OpenApiParameter("session", int, description="the session of this run of the agent (from connect/)"),
    ],
        responses={200: doc(protocol.JobList), **ERRORS})
    def get(self, request):
        """The agent's pending jobs, taken by it; waits up to `wait` seconds for one."""


def _error(message: str, code: int) -> JsonResponse:
    response = JsonResponse({"detail": message}, status=code)
    if code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="dockersupport agent"'
    return response


def _claim(agent, session):
    try:
        agents.agent_seen(agent)
        return agents.jobs_claim(agent=agent, session=session)
    finally:
        # A waiting agent holds no database connection: a server with many agents would run out.
        if not connection.in_atomic_block:
            connection.close()


NOTICE_EVERY = 0.5  # seconds: how soon a waiting agent hears of a new job (API logins: within 2 s)


def _database_every() -> float:
    """How often a long-poll asks the database: seldom when job notices reach every process (a shared
    cache, Redis in production), every second with a per-process cache (the embedded mode)."""
    return 1.0 if "locmem" in settings.CACHES["default"]["BACKEND"].lower() else 10.0


async def agent_jobs(request):
    """GET /api/v1/agent/jobs/?wait=N: an agent's long-poll for work.

    Async, so that an ASGI server holds many waiting agents without a thread each. While it waits
    it checks the job notice in the cache every NOTICE_EVERY seconds (a job made in any process bumps it when
    the cache is shared, Redis in production) and the database now and then (`_database_every`),
    without holding a database connection in between.
    """
    if request.method != "GET":
        return _error("only GET", 405)
    problem = protocol_problem(request)
    if problem:
        return _error(problem, 426)
    token = bearer_token(request)
    if token is None or not token.startswith(protocol.AGENT_TOKEN_PREFIX):
        return _error("an agent's token is needed here", 401)
    agent = await sync_to_async(agents.agent_authenticate)(token)
    if agent is None:
        return _error(REVOKED, 401)
    try:
        wait = min(max(int(request.GET.get("wait", "0")), 0), settings.DOCKERSUPPORT_AGENT_JOB_WAIT)
    except ValueError:
        return JsonResponse({"wait": ["a whole number of seconds"]}, status=400)
    try:
        session = int(request.GET["session"]) if "session" in request.GET else None
    except ValueError:
        return JsonResponse({"session": ["the session number that connect/ answered"]}, status=400)
    if session is not None and not 0 <= session < 2 ** 31:
        return JsonResponse({"session": ["the session number that connect/ answered"]}, status=400)
    deadline = time.monotonic() + wait
    notice = await sync_to_async(agents.job_notice)(agent.pk)
    every = _database_every()
    while True:
        jobs = await sync_to_async(_claim)(agent, session)
        if jobs or time.monotonic() >= deadline:
            return JsonResponse(protocol.to_json(protocol.JobList(jobs=jobs)))
        next_query = min(time.monotonic() + every, deadline)
        while time.monotonic() < next_query:
            await asyncio.sleep(NOTICE_EVERY)
            current = await sync_to_async(agents.job_notice)(agent.pk)
            if current != notice:
                notice = current
                break


# drf-spectacular documents views that have a DRF class: this one is documented by AgentJobsSchema.
agent_jobs.cls = AgentJobsSchema
agent_jobs.initkwargs = {}
