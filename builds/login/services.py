"""Writes about builds from start to finish: start, credentials, login reports, close.

Logins and logouts happen on the build host, in the build's agent (agent/): the server starts
builds, obtains their credentials and hands them to the agent that runs them (the agent
protocol, builds/agent_api.py), and closes builds when their agent says they ended. A build is
started by run_build through its agent, or by the REST API, which waits for the agent's login.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from agent import protocol
from agent.references import registry_identity
from connections.models import Connection
from connections.registries import RegistryError, credentials_for, docker_server
from connections.selectors import connections_usable_by

from ..agents import services as agents
from ..agents.selectors import agent_is_connected
from ..models import Agent, AgentJob, Build, BuildConfiguration, LoginConnection
from ..operations.records import text_clean
from ..operations.selectors import docker_info_summary
from ..operations.services import event_batches_wait
from ..reported.services import report_token_issue
from .selectors import configuration_get

BUILD_NUMBER_MAX = 2_147_483_647  # what Build.number holds on every database


class BuildStartError(Exception):
    """The build could not be started; nothing was created. `field`: the input it is about."""

    def __init__(self, message: str, *, field: str = "number"):
        super().__init__(message)
        self.field = field


def login_hosts_validate(connections: Iterable[Connection]) -> None:
    """A Docker config holds one credential per registry: two logins to one registry (under any of its
    names, Docker Hub's aliases included) are an error."""
    seen: dict[str, Connection] = {}
    for connection in connections:
        host = registry_identity(connection.registry_address)
        if host in seen:
            raise ValidationError(
                f"connections '{seen[host].ident}' and '{connection.ident}' both log in to {host}; "
                "a Docker config holds one credential per registry host",
                code="duplicate_registry_host",
            )
        seen[host] = connection


@transaction.atomic
def builds_set_pinned(builds: Iterable[Build], pinned: bool) -> int:
    """Pinned builds are never deleted by retention."""
    return Build.objects.filter(pk__in=[b.pk for b in builds]).update(pinned=pinned)


def build_start(*, configuration: BuildConfiguration, agent: Agent, number: int | None = None,
                started_by: str = Build.StartedBy.RUN_BUILD) -> Build:
    """Creates a running build, numbered after the configuration's last one unless `number` is given.

    Its errors name the number as the caller gave it: run_build's `--number`, the API's "number" field."""
    number_input = '"number"' if started_by == Build.StartedBy.API else "--number"
    now = timezone.now()
    try:
        with transaction.atomic():
            # Locking the configuration serialises numbering between concurrent starts.
            BuildConfiguration.objects.select_for_update().filter(pk=configuration.pk).first()
            if number is None:
                number = (configuration.builds.aggregate(last=Max("number"))["last"] or 0) + 1
                if number > BUILD_NUMBER_MAX:
                    raise BuildStartError(
                        f"configuration '{configuration.ident}' has used the highest build number, "
                        f"{BUILD_NUMBER_MAX}; give a {number_input} of a build that no longer exists"
                    )
            return Build.objects.create(
                configuration=configuration, agent=agent, number=number, started_at=now, heartbeat_at=now,
                started_by=started_by,
            )
    except IntegrityError:
        if started_by == Build.StartedBy.API:
            message = (f"build number {number} of configuration '{configuration.ident}' exists: "
                       'give another "number" or leave it out to take the next one')
        else:
            message = (f"build {number} of configuration '{configuration.ident}' already exists; "
                       "give another --number or leave it out to take the next one")
        raise BuildStartError(message) from None


def _session_name(build: Build) -> str:
    return f"dockersupport-{build.configuration.ident}-{build.number}"


def build_heartbeat(*, build: Build) -> None:
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(heartbeat_at=timezone.now())


def build_abandon(*, build: Build, reason: str, status: str = Build.Status.LOST) -> None:
    """Closes a running build nobody will finish; its agent is asked to log it out (erase its config)."""
    with transaction.atomic():
        closed = Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
            status=status, error=reason[:5000], finished_at=timezone.now())
        if closed:
            agents.job_create(agent=build.agent, kind=AgentJob.Kind.LOGOUT, build=build,
                              payload={"lost": reason[:5000]})


def _check_startable(agent: Agent, configuration: BuildConfiguration) -> None:
    if not agent.serves(configuration.project):
        # Not which projects it serves: the caller may not see them.
        raise BuildStartError(
            f"agent {agent} does not run builds of project '{configuration.project.ident}'; "
            "assign the project to the agent (a superuser does) or run the build on another agent", field="agent",
        )
    try:
        login_hosts_validate(login.connection for login in _logins_of(configuration))
    except ValidationError as exc:
        raise BuildStartError(f"configuration '{configuration.ident}': {exc.messages[0]}",
                              field="configuration") from None


def _logins_of(configuration: BuildConfiguration) -> list[LoginConnection]:
    return list(configuration.logins.select_related("connection__project"))


# --- Builds started by the REST API: the API waits for their agent -------------------------------------

@dataclass(frozen=True)
class AgentAnswer:
    """What a build's agent made of a login or logout the API waits for: done (`result`), failed
    (`error`, the agent's words), or no answer (`unanswered` says why)."""

    result: dict = field(default_factory=dict)
    error: str = ""
    unanswered: str = ""

    @classmethod
    def failed(cls, job: AgentJob) -> "AgentAnswer":
        return cls(error=job.error or f"the agent's {job.kind} job failed without saying why")

    @property
    def done(self) -> bool:
        return not (self.error or self.unanswered)


def build_start_api(*, configuration: BuildConfiguration, agent: Agent, number: int | None = None):
    """An API-driven build: created running, with a login job for its agent. Returns (build, job)."""
    _check_startable(agent, configuration)
    with transaction.atomic():
        build = build_start(configuration=configuration, agent=agent, number=number, started_by=Build.StartedBy.API)
        job = agents.job_create(agent=agent, kind=AgentJob.Kind.LOGIN, build=build)
    return build, job


def build_finish_api(*, build: Build, exit_code: int):
    """An API-driven build ends: its agent logs it out and closes it. Returns the logout job (the one
    already waiting when the client asks again after a timeout)."""
    waiting = AgentJob.objects.filter(build=build, kind=AgentJob.Kind.LOGOUT,
                                      status__in=[AgentJob.Status.PENDING, AgentJob.Status.CLAIMED]).first()
    if waiting is not None:
        return waiting
    return agents.job_create(agent=build.agent, kind=AgentJob.Kind.LOGOUT, build=build,
                             payload={"exit_code": exit_code})


def build_start_remote(*, configuration: BuildConfiguration, agent: Agent, number: int | None = None,
                       timeout: float) -> tuple[Build, AgentAnswer]:
    """Starts a build and waits up to `timeout` seconds for its agent to log it in.

    A build whose login does not happen (its agent not connected, too slow, or failing) ends as an
    error at once, and its agent erases whatever it wrote for it. Raises BuildStartError (nothing made).
    """
    build, job = build_start_api(configuration=configuration, agent=agent, number=number)
    if not agent_is_connected(agent):
        agents.job_withdraw(job)
        build_abandon(build=build, reason=f"agent {agent} is not connected", status=Build.Status.ERROR)
        return build, AgentAnswer(unanswered="it is not connected")
    done = agents.job_wait(job, timeout)
    if done is None:
        # Withdrawn before the agent took it, or taken and slow: what it writes is erased by the logout.
        reason = ("its agent did not log it in in time" if agents.job_withdraw(job)
                  else "its agent did not finish logging it in in time")
        build_abandon(build=build, reason=reason, status=Build.Status.ERROR)
        return build, AgentAnswer(unanswered="login")
    if done.status == AgentJob.Status.FAILED:
        answer = AgentAnswer.failed(done)
        build_abandon(build=build, reason=answer.error, status=Build.Status.ERROR)
        return build, answer
    return build, AgentAnswer(result=done.result)


def build_finish_remote(*, build: Build, exit_code: int, timeout: float) -> AgentAnswer:
    """Has the build's agent log it out and close it; waits up to `timeout` seconds for that.

    Without an answer in time the logout stays queued: the agent does it when it takes it.
    """
    job = build_finish_api(build=build, exit_code=exit_code)
    if not agent_is_connected(build.agent):
        return AgentAnswer(unanswered="it is not connected; the logout waits for it")
    done = agents.job_wait(job, timeout)
    if done is None:
        return AgentAnswer(unanswered="the logout is queued and runs when the agent takes it")
    if done.status == AgentJob.Status.FAILED:
        return AgentAnswer.failed(done)
    build.refresh_from_db()
    return AgentAnswer(result=done.result)


# --- Builds run by agents (the agent protocol) ------------------------------------------------------

def build_credentials(build: Build) -> list:
    """The registry logins of a running build, with their credentials (obtained here, on the server).

    A connection whose credentials cannot be obtained comes back with its error instead: the agent
    treats it as a failed login (a warning when the login is optional). So does a connection that is no
    longer of the configuration's project or its ancestors (the tree changed by a path that did not check
    it): its credentials are never obtained.
    """
    configuration = build.configuration
    project = configuration.project
    usable = set(connections_usable_by(project).values_list("pk", flat=True))
    logins = []
    for login in _logins_of(configuration):
        connection = login.connection
        entry = protocol.RegistryLogin(connection=str(connection), registry=connection.registry_address,
                                       server=docker_server(connection), optional=login.optional)
        if connection.pk not in usable:
            entry.error = (
                f"login with connection '{connection}' refused: it belongs to project '{connection.project.ident}', "
                f"which is not project '{project.ident}' of configuration '{configuration.ident}' or one of its "
                "ancestors (the project tree changed); give the configuration a connection of its project or its "
                "ancestors"
            )
            logins.append(entry)
            continue
        try:
            obtained = credentials_for(connection, session_name=_session_name(build))
        except RegistryError as exc:
            entry.error = f"login with connection '{connection}' to {connection.registry_address} failed: {exc}"
        else:
            entry.username, entry.password, entry.expires_at = obtained.username, obtained.password, obtained.expires_at
        logins.append(entry)
    return logins


def build_start_on_agent(*, agent: Agent, configuration_ident: str, number: int | None = None,
                         started_by: str = Build.StartedBy.RUN_BUILD):
    """Starts a build on the agent asking (run_build): the build, its token and its logins' credentials."""
    try:
        configuration = configuration_get(configuration_ident)
    except BuildConfiguration.DoesNotExist as exc:
        raise BuildStartError(str(exc), field="configuration") from None
    _check_startable(agent, configuration)
    build = build_start(configuration=configuration, agent=agent, number=number, started_by=started_by)
    token = agents.build_token_issue(build)
    return protocol.BuildStarted(build=agents.build_info(build), token=token, logins=build_credentials(build),
                                 exact_attribution=configuration.exact_attribution,
                                 report_token=report_token_issue(build))


def _attribution_fields(report) -> dict:
    """The build's attribution as its agent reported it: 'exact' or 'time', with its note. A report without
    one (an older agent) changes nothing: the build's attribution stays as known, or unknown."""
    if report.attribution not in Build.Attribution.values:
        return {}
    note = text_clean(report.attribution_note)[:Build._meta.get_field("attribution_note").max_length]
    return {"attribution": report.attribution, "attribution_note": note}


def build_login_report(*, build: Build, report) -> Build:
    """What the agent did with the build's logins. A failed required login: the build did not run.

    Only for a running build: a report that arrives after the build's finish (which carries it
    too) changes nothing.
    """
    now = timezone.now()
    if not Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).exists():
        return build
    if report.error:
        Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
            status=Build.Status.ERROR, error=report.error[:5000], docker_config="", finished_at=now,
            logged_out_at=now, token_hash="", warnings=[*build.warnings, *report.warnings],
        )
    else:
        # Still running in the same statement: a finish between the check above and this update would
        # otherwise get the erased config's path back.
        Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
            # The report may come twice (sent, then carried by the finish): its warnings count once.
            docker_config=report.docker_config[:500], warnings=list(dict.fromkeys([*build.warnings, *report.warnings])),
            logged_in_registries=report.registries, login_expires_at=report.expires_at,
            **_attribution_fields(report),
        )
    build.refresh_from_db()
    return build


def build_close(*, build: Build, exit_code: int | None = None, lost: str = "", events_through: int = 0,
                logins=None, events_timeout: float = 30):
    """Closes a build the agent finished (or lost), once the server holds its Docker operations.

    The agent has erased the build's config; its token stops working. Returns the FinishAnswer
    with the Docker Info summary, which therefore counts every operation of the build.
    """
    if logins is not None and not logins.error:
        build = build_login_report(build=build, report=logins)
    if events_through:
        event_batches_wait(agent=build.agent, through=events_through, timeout=events_timeout,
                                          since=build.started_at)
    now = timezone.now()
    if lost:
        status, error = Build.Status.LOST, lost[:5000]
    else:
        status, error = (Build.Status.SUCCEEDED if exit_code == 0 else Build.Status.FAILED), ""
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
        status=status, exit_code=exit_code, finished_at=now, error=error)
    Build.objects.filter(pk=build.pk).update(docker_config="", logged_out_at=now, token_hash="")
    build.refresh_from_db()
    return protocol.FinishAnswer(status=build.status, summary=docker_info_summary(build))
