"""Writes about build configurations and builds: start, registry login, logout, finish.

Login and logout touch the agent's Docker daemon and file system, so they run on the build
host: in `run_build` itself, or in a Celery worker of the agent's queue for API-driven builds.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from connections.models import Connection
from connections.registries import RegistryCredentials, RegistryError, credentials_for
from connections.registries.credentials import REFRESH_LEAD, docker_server

from .docker.client_config import config_dir_create, config_dir_remove, config_servers, config_write
from .docker.daemon import DaemonError, daemon_client, daemon_verify_login
from .models import Agent, Build, BuildConfiguration, LoginConnection


BUILD_NUMBER_MAX = 2_147_483_647  # what Build.number holds on every database


class BuildStartError(Exception):
    """The build could not be started; nothing was created."""


class BuildLoginError(Exception):
    """A required login failed: the build is marked as an error and its command must not run."""


@dataclass
class LoginResult:
    docker_config: str
    logged_in: list[str] = field(default_factory=list)  # "project/connection → host"
    warnings: list[str] = field(default_factory=list)


def login_hosts_validate(connections: Iterable[Connection]) -> None:
    """A Docker config holds one credential per registry host: two logins to one host are an error."""
    seen: dict[str, Connection] = {}
    for connection in connections:
        host = connection.registry_address
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
    """Creates a running build, numbered after the configuration's last one unless `number` is given."""
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
                        f"{BUILD_NUMBER_MAX}; give a --number of a build that no longer exists"
                    )
            return Build.objects.create(
                configuration=configuration, agent=agent, number=number, started_at=now, heartbeat_at=now,
                started_by=started_by,
            )
    except IntegrityError:
        raise BuildStartError(
            f"build {number} of configuration '{configuration.ident}' already exists; "
            "give another --number or leave it out to take the next one"
        ) from None


def _session_name(build: Build) -> str:
    return f"dockersupport-{build.configuration.ident}-{build.number}"


def _build_logins(build: Build) -> list[LoginConnection]:
    return list(build.configuration.logins.select_related("connection__project"))


def build_login(*, build: Build) -> LoginResult:
    """Logs the build in to its configuration's registries, into a DOCKER_CONFIG of its own.

    Every credential is first verified by the agent's daemon with the registry. A failed
    optional login becomes a warning of the build; a failed required one erases what was
    written, marks the build as an error and raises BuildLoginError.
    """
    root = settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT
    logins = _build_logins(build)
    try:
        login_hosts_validate(login.connection for login in logins)
    except ValidationError as exc:
        _fail(build, f"configuration '{build.configuration.ident}': {exc.messages[0]}")
    path = config_dir_create(root, f"{build.configuration.ident}-{build.number}")
    Build.objects.filter(pk=build.pk).update(docker_config=str(path))
    build.docker_config = str(path)
    result = LoginResult(docker_config=str(path))
    credentials: list[RegistryCredentials] = []
    try:
        client = daemon_client(build.agent.effective_docker_host)
    except DaemonError as exc:
        config_dir_remove(path, root)
        _fail(build, f"login failed on agent {build.agent}: {exc}")
    try:
        for login in logins:
            connection = login.connection
            try:
                obtained = credentials_for(connection, session_name=_session_name(build))
                daemon_verify_login(client, obtained)
            except (RegistryError, DaemonError) as exc:
                message = f"login with connection '{connection}' to {connection.registry_address} failed: {exc}"
                if login.optional:
                    result.warnings.append(message)
                    continue
                config_dir_remove(path, root)
                _fail(build, message)
            credentials.append(obtained)
            result.logged_in.append(f"{connection} → {connection.registry_address}")
    finally:
        client.close()
    config_write(path, credentials)
    expiries = [c.expires_at for c in credentials if c.expires_at is not None]
    build.login_expires_at = min(expiries) if expiries else None
    build.warnings = [*build.warnings, *result.warnings]
    build.logged_in_registries = [login.connection.registry_address for login in logins
                                  if docker_server(login.connection) in {c.server for c in credentials}]
    build.save(update_fields=["login_expires_at", "warnings", "logged_in_registries"])
    return result


def _fail(build: Build, message: str):
    Build.objects.filter(pk=build.pk).update(
        status=Build.Status.ERROR, error=message, docker_config="", finished_at=timezone.now(),
        logged_out_at=timezone.now(),
    )
    build.refresh_from_db()
    raise BuildLoginError(message)


def build_refresh_logins(*, build: Build) -> bool:
    """Writes fresh tokens into a running build's config before its expiring ones (ECR) run out.

    Returns True when the config was rewritten. Logins that failed at the start stay out.
    """
    if not build.is_running or not build.docker_config or build.login_expires_at is None:
        return False
    if build.login_expires_at > timezone.now() + REFRESH_LEAD:
        return False
    path = Path(build.docker_config)
    logged_in = config_servers(path)
    credentials = []
    for login in _build_logins(build):
        if docker_server(login.connection) not in logged_in:
            continue
        try:
            credentials.append(credentials_for(
                login.connection, session_name=_session_name(build), valid_for=REFRESH_LEAD + REFRESH_LEAD,
            ))
        except RegistryError as exc:
            build.warnings = [*build.warnings, f"refreshing connection '{login.connection}' failed: {exc}"]
    config_write(path, credentials)
    expiries = [c.expires_at for c in credentials if c.expires_at is not None]
    build.login_expires_at = min(expiries) if expiries else None
    build.save(update_fields=["login_expires_at", "warnings"])
    return True


def build_logout(*, build: Build) -> bool:
    """Erases the build's credentials; harmless when already done. True if something was removed."""
    removed = False
    if build.docker_config:
        removed = config_dir_remove(build.docker_config, settings.DOCKERSUPPORT_BUILD_CONFIG_ROOT)
    now = timezone.now()
    Build.objects.filter(pk=build.pk).update(docker_config="", logged_out_at=now)
    build.docker_config, build.logged_out_at = "", now
    return removed


def build_heartbeat(*, build: Build) -> None:
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(heartbeat_at=timezone.now())


def build_finish(*, build: Build, exit_code: int) -> Build:
    """Logs the build out and records how it ended."""
    build_logout(build=build)
    status = Build.Status.SUCCEEDED if exit_code == 0 else Build.Status.FAILED
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
        status=status, exit_code=exit_code, finished_at=timezone.now(),
    )
    build.refresh_from_db()
    return build


def build_abandon(*, build: Build, reason: str) -> None:
    """Closes a build whose process died; its logout is done by the agent (see tasks)."""
    Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
        status=Build.Status.ERROR, error=reason, finished_at=timezone.now(),
    )


# --- Builds run by agents (the agent protocol) ------------------------------------------------------

def build_info(build: Build) -> "protocol.BuildInfo":
    from agent import protocol

    return protocol.BuildInfo(id=build.pk, number=build.number, configuration=build.configuration.ident,
                              project=build.configuration.project.ident)


def build_token_issue(build: Build) -> str:
    """A new token for the build's later requests; the previous one stops working."""
    from agent import protocol

    from .agent_services import new_token

    token, digest = new_token(protocol.BUILD_TOKEN_PREFIX)
    Build.objects.filter(pk=build.pk).update(token_hash=digest)
    build.token_hash = digest
    return token


def build_credentials(build: Build) -> list:
    """The registry logins of a running build, with their credentials (obtained here, on the server).

    A connection whose credentials cannot be obtained comes back with its error instead: the agent
    treats it as a failed login (a warning when the login is optional).
    """
    from agent import protocol

    logins = []
    for login in _build_logins(build):
        connection = login.connection
        entry = protocol.RegistryLogin(connection=str(connection), registry=connection.registry_address,
                                       server=docker_server(connection), optional=login.optional)
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
    from agent import protocol

    from .selectors import configuration_get

    try:
        configuration = configuration_get(configuration_ident)
    except BuildConfiguration.DoesNotExist as exc:
        raise BuildStartError(str(exc)) from None
    agent_check_serves(agent, configuration)
    try:
        login_hosts_validate(login.connection for login in _build_logins_of(configuration))
    except ValidationError as exc:
        raise BuildStartError(f"configuration '{configuration.ident}': {exc.messages[0]}") from None
    build = build_start(configuration=configuration, agent=agent, number=number, started_by=started_by)
    token = build_token_issue(build)
    return protocol.BuildStarted(build=build_info(build), token=token, logins=build_credentials(build))


def agent_check_serves(agent: Agent, configuration: BuildConfiguration) -> None:
    if not agent.serves(configuration.project):
        served = ", ".join(agent.projects.values_list("ident", flat=True))
        raise BuildStartError(
            f"agent {agent} does not run builds of project '{configuration.project.ident}' (it serves: {served}); "
            "assign the project to the agent or run the build on another agent"
        )


def _build_logins_of(configuration: BuildConfiguration) -> list[LoginConnection]:
    return list(configuration.logins.select_related("connection__project"))


def build_login_report(*, build: Build, report) -> Build:
    """What the agent did with the build's logins. A failed required login: the build did not run."""
    now = timezone.now()
    if report.error:
        Build.objects.filter(pk=build.pk, status=Build.Status.RUNNING).update(
            status=Build.Status.ERROR, error=report.error[:5000], docker_config="", finished_at=now,
            logged_out_at=now, token_hash="", warnings=[*build.warnings, *report.warnings],
        )
    else:
        Build.objects.filter(pk=build.pk).update(
            docker_config=report.docker_config[:500], warnings=[*build.warnings, *report.warnings],
            logged_in_registries=report.registries, login_expires_at=report.expires_at,
        )
    build.refresh_from_db()
    return build


def build_close(*, build: Build, exit_code: int | None = None, lost: str = "", events_through: int = 0,
                events_timeout: float = 30):
    """Closes a build the agent finished (or lost), once the server holds its Docker operations.

    The agent has erased the build's config; its token stops working. Returns the FinishAnswer
    with the Docker Info summary, which therefore counts every operation of the build.
    """
    from agent import protocol

    from .agent_services import event_batches_wait
    from .selectors import docker_info_summary

    if events_through:
        event_batches_wait(agent=build.agent, through=events_through, timeout=events_timeout)
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
