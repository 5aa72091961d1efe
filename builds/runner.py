"""The run_build wrapper: runs a build's command between registry login and logout.

The command gets DOCKER_CONFIG (the build's own client config) and the agent's DOCKER_HOST in
its environment only; this process's environment is never changed, so nothing leaks into other
builds. Logout happens however the command ends: exit, failure, an exception here, or SIGINT /
SIGTERM to run_build (forwarded to the command first).
"""

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connection

from . import services
from .models import Agent, Build, BuildConfiguration
from .recording import OperationRecorder
from .selectors import docker_info_summary

LOGIN_FAILED_EXIT_CODE = 1
DISK_SPACE_EXIT_CODE = 1
COMMAND_NOT_FOUND_EXIT_CODE = 127


@dataclass
class RunResult:
    build: Build
    exit_code: int
    login: services.LoginResult | None = None


class _Heartbeat(threading.Thread):
    """Marks the build alive and refreshes expiring registry tokens while the command runs."""

    def __init__(self, build: Build, interval: float):
        super().__init__(name=f"heartbeat-{build.pk}", daemon=True)
        self.build, self.interval = build, interval
        self.stopped = threading.Event()

    def run(self):
        try:
            while not self.stopped.wait(self.interval):
                services.build_heartbeat(build=self.build)
                self.build.refresh_from_db(fields=["status", "docker_config", "login_expires_at", "warnings"])
                services.build_refresh_logins(build=self.build)
        finally:
            connection.close()  # this thread's own database connection

    def stop(self):
        self.stopped.set()
        self.join(timeout=10)


def run_build(*, configuration: BuildConfiguration, agent: Agent, command: list[str], number: int | None = None,
              required_free: int | None = None, out=sys.stdout, err=sys.stderr) -> RunResult:
    build = services.build_start(configuration=configuration, agent=agent, number=number,
                                 started_by=Build.StartedBy.RUN_BUILD)
    out.write(f"dockersupport: build {build} (id {build.pk}) on agent {agent}\n")
    if required_free is not None and not _free_disk_space(build, agent, required_free, out, err):
        return RunResult(build=Build.objects.get(pk=build.pk), exit_code=DISK_SPACE_EXIT_CODE)
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum, frame):
        received.append(signum)
        if child and child[0].poll() is None:
            # A second signal means "now": the command is killed.
            child[0].send_signal(signal.SIGKILL if len(received) > 1 else signum)
        elif not child:
            raise KeyboardInterrupt  # stop before the command starts; `finally` logs out

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    heartbeat = recorder = None
    exit_code = LOGIN_FAILED_EXIT_CODE
    login = None
    try:
        try:
            login = services.build_login(build=build)
        except services.BuildLoginError as exc:
            err.write(f"dockersupport: {exc}\ndockersupport: the command was not run.\n")
            return RunResult(build=Build.objects.get(pk=build.pk), exit_code=LOGIN_FAILED_EXIT_CODE)
        for line in login.logged_in:
            out.write(f"dockersupport: logged in with {line}\n")
        for warning in login.warnings:
            err.write(f"dockersupport: warning: {warning}\n")
        out.flush()
        recorder = OperationRecorder(agent, build)
        if not recorder.start():
            err.write(f"dockersupport: warning: {recorder.error}\n")
        heartbeat = _Heartbeat(build, settings.DOCKERSUPPORT_HEARTBEAT_INTERVAL)
        heartbeat.start()
        environment = {**os.environ, "DOCKER_CONFIG": login.docker_config}
        if agent.effective_docker_host:
            environment["DOCKER_HOST"] = agent.effective_docker_host
        try:
            child.append(subprocess.Popen(command, env=environment))
        except OSError as exc:
            err.write(f"dockersupport: cannot run {command[0]!r}: {exc.strerror}\n")
            exit_code = COMMAND_NOT_FOUND_EXIT_CODE
        else:
            returncode = child[0].wait()
            exit_code = returncode if returncode >= 0 else 128 - returncode
    except KeyboardInterrupt:
        exit_code = 128 + (received[0] if received else signal.SIGINT)
    finally:
        if recorder is not None:
            recorder.stop()
        if heartbeat is not None:
            heartbeat.stop()
        close_old_connections()
        if login is not None or Build.objects.filter(pk=build.pk).exclude(docker_config="").exists():
            build = services.build_finish(build=build, exit_code=exit_code)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out.write(f"dockersupport: logged out; build {build} {build.status} with exit code {exit_code}\n")
    out.write(summary_text(docker_info_summary(build)))
    return RunResult(build=build, exit_code=exit_code, login=login)


def _free_disk_space(build: Build, agent: Agent, required: int, out, err) -> bool:
    """Frees space before the command runs (Free Disk Space); False stops the build."""
    from .agent_cleanup import AgentCleanupError, free_disk_space, human

    try:
        result = free_disk_space(agent, required, reason=f"build {build} requires {human(required)} free",
                                 progress=lambda line: out.write(f"dockersupport: {line}\n"))
    except AgentCleanupError as exc:
        message = f"free disk space: {exc}"
    else:
        if result.met:
            out.write(f"dockersupport: {human(result.free_after)} free on {result.path} "
                      f"({human(required)} required, {len(result.removed)} image(s) removed)\n")
            return True
        message = (f"free disk space: {human(required)} required on {result.path} but only "
                   f"{human(result.free_after)} could be freed: short by {human(result.shortfall)}")
    err.write(f"dockersupport: {message}\ndockersupport: the command was not run.\n")
    services.build_abandon(build=build, reason=message)
    return False


def summary_text(summary: dict) -> str:
    """The Docker Info summary, as run_build prints it at the end."""
    lines = [f"dockersupport: Docker operations: {summary['operation_count']}"]
    for label, key in (("pulled", "images_pulled"), ("built", "images_built"), ("pushed", "images_pushed")):
        if summary[key]:
            lines.append(f"dockersupport:   {label}: {', '.join(summary[key])}")
    for container in summary["containers"]:
        mark = "  FAILED" if container["failed"] else ""
        lines.append(f"dockersupport:   container {container['name'] or container['id'][:12]} "
                     f"({container['image']}) exited {container['exit_code']}{mark}")
    for warning in summary["warnings"]:
        lines.append(f"dockersupport:   warning: {warning}")
    return "\n".join(lines) + "\n"
