"""The agent process: `python manage.py agent --server URL --token-file FILE`.

One process next to one Docker daemon. Its threads: the local socket that run_build talks to
(agent.local), the job poll (work the server has for it: API-driven builds' logins and logouts,
Free Disk Space), the heartbeat (alive, its daemon's state, its running builds; fresh tokens for
builds whose ECR token nears its end), the daemon's event stream into the spool, and the spool's
sender. The server is never connected to it; when the server is away, everything waits and
retries, and nothing is lost.
"""

import contextlib
import json
import logging
import os
import platform
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import __version__, cleanup, endpoints, protocol
from .attribution import Attributor
from .builds import BuildBook, BuildFailed, RunningBuild, process_alive, process_started
from .config_dirs import config_dir_create, config_dir_remove, config_write, host_settings
from .daemon import Daemon, DaemonError
from .events import BuildWindows, EventStream
from .local import LocalServer
from .server_api import ServerAPI, ServerError, ServerUnavailable, ServerUnreachable, Unrecoverable, retrying
from .spool import Spool

log = logging.getLogger("dockersupport.agent")

BATCH_BYTES = 1024 * 1024  # a batch's records in JSON, at most (the server takes requests up to 2.5 MB)
RECORD_BYTES = 64 * 1024  # a record larger than this loses its attributes (labels), not the record
REFRESH_LEAD = timedelta(minutes=15)  # a running build's expiring token (ECR) is replaced this long before
FINISH_EVENTS_TIMEOUT = 60  # how long a finish waits for the server to take the build's events
KEEP_FREE_EVERY = 300  # seconds: the least time between two Free Disk Space runs of the keep-free threshold


@dataclass
class AgentConfig:
    server: str
    token: str
    directory: Path
    docker_host: str = ""  # DOCKER_HOST of the agent's own environment: wins over the admin's setting
    data_path: str = ""  # DOCKERSUPPORT_DOCKER_DATA_PATH
    ca_file: str = ""
    socket_group: str = ""  # the group that may use the socket (run_build's users)
    api_build_uid: int | None = None  # the user API-driven builds' configs are given to (agent as root)
    engine: str = "docker"  # or "podman": its Docker-compatible API serves DOCKER_HOST (--engine)

    @property
    def socket_path(self) -> Path:
        return self.directory / "agent.sock"


class Agent:
    def __init__(self, config: AgentConfig, say=print):
        self.config, self.say = config, say
        config.directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.api = ServerAPI(config.server, config.token, config.ca_file)
        self.book = BuildBook(config.directory / "builds")
        self.spool = Spool(config.directory / "spool")
        self.windows = BuildWindows()
        self.attributor = Attributor(self.windows)  # builds with their own Docker endpoint: what they asked
        self.endpoints_dir = config.directory / "endpoints"  # their journals and logs: the agent's, not theirs
        self.endpoints_dir.mkdir(exist_ok=True, mode=0o700)
        self._endpoints: dict[int, object] = {}  # build id -> the endpoint process this agent started
        self._endpoints_lock = threading.RLock()  # a finish's stop and the heartbeat's restart never cross
        self.stopped = threading.Event()
        self.refused = ""  # the server refused this agent (revoked token, protocol): it stops for good
        self.failed = ""  # one of its threads failed: it stops, and is started again
        self.settings: protocol.AgentSettings | None = None
        self.daemon: Daemon | None = None
        self.stream: EventStream | None = None
        self.config_root = config.directory / "configs"
        self._threads: list[threading.Thread] = []
        self._local = None
        self._send_limit = protocol.EVENT_BATCH_SIZE
        self._clients: set[int] = set()  # builds whose run_build is connected now
        self._clients_lock = threading.Lock()
        self.uses = cleanup.ImageUses()  # what builds did with images (Free Disk Space keeps what running ones use)
        self._adopted: set[int] = set()  # builds a previous run of the agent started: their early uses are unknown
        self._cleanup_lock = threading.Lock()  # one Free Disk Space run at a time
        self._keep_free_at: float | None = None  # when the keep-free threshold last started a run (monotonic)
        # The config.json files written for each build, as (device, inode): erased through any hard link.
        self._config_files: dict[int, set[tuple[int, int]]] = {}

    # Life ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Runs until stop(); 0, 2 when the server refused this agent (revoked token, protocol), 1 on a failure."""
        try:
            self.settings = retrying(
                lambda: self.api.connect(self._hello(Daemon(self._docker_host(None), engine=self.config.engine))),
                stopped=self.stopped, say=self._warn)
        except ServerUnavailable:
            return 0  # stopped while the server was away
        except ServerError as exc:  # revoked, another protocol, a redirect, not a dockersupport server...
            self.say(f"dockersupport agent: {exc}")
            return 2
        login_config = self.config.directory / "empty-docker-config.json"
        login_config.write_text("{}")
        self.daemon = Daemon(self._docker_host(self.settings), str(login_config), engine=self.config.engine)
        self._adopt()
        since = self.spool.position() or self._daemon_now_or_clock()
        self.stream = EventStream(self._stream_client, since, self.windows, self._spool_record,
                                  attributor=self.attributor, engine=self.config.engine)
        self.stream.start()
        self._local = LocalServer(self, self.config.socket_path, self.config.socket_group)
        self._local.start()
        for target in (self._send_events, self._beat, self._poll_jobs):
            thread = threading.Thread(target=self._guarded(target), name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        ok, error, _ = self.daemon.state()
        self.say(f"dockersupport agent {self.settings.name} ready: socket {self.config.socket_path}, Docker "
                 f"daemon {self.daemon.docker_host or 'DOCKER_HOST'}" + ("" if ok else f" (NOT ANSWERING: {error})")
                 + f", server {self.config.server}")
        self.stopped.wait()
        self._shutdown()
        if self.refused:
            # No agent of this token will adopt these builds: nothing of their credentials may stay.
            for build in self.book.all():
                self._erase(build)
                self._endpoint_stop(build)
                self._forget(build)
            self.say(f"dockersupport agent: stopped: {self.refused}")
            return 2
        if self.failed:
            # The next run of the agent (systemd restarts it) adopts the running builds.
            self.say(f"dockersupport agent: stopped: {self.failed}")
            return 1
        return 0

    def stop(self):
        self.stopped.set()

    def _stream_client(self):
        return self.daemon.new_client()

    def _shutdown(self):
        # Running builds go on: their run_build reconnects to the next agent, which adopts them.
        if self._local is not None:
            self._local.stop()
        if self.stream is not None:
            self.stream.stop()
            self.spool.save_position(self.stream.resume_nano)
        self.spool.close()

    def _guarded(self, target):
        def run():
            try:
                target()
            except Unrecoverable as exc:
                self.refused = str(exc)
                self.stop()
            except Exception:  # noqa: BLE001 - a thread that dies is an agent that does half its work
                log.exception("agent thread %s failed; stopping the agent", target.__name__)
                self.failed = f"internal error in {target.__name__} (see the log above)"
                self.stop()
        return run

    def _warn(self, text: str) -> None:
        self.say(f"dockersupport agent: {text}")

    def _docker_host(self, settings: protocol.AgentSettings | None) -> str:
        return self.config.docker_host or (settings.docker_host if settings else "")

    def _hello(self, daemon: Daemon) -> protocol.ConnectRequest:
        ok, error, version = daemon.state()
        return protocol.ConnectRequest(agent_version=__version__, hostname=socket.gethostname(),
                                       os=platform.system().lower(), data_path=self.config.data_path,
                                       daemon=protocol.DaemonState(ok=ok, error=error, version=version,
                                                                   docker_host=daemon.docker_host))

    def _daemon_now_or_clock(self) -> int:
        try:
            return self.daemon.now_nano()
        except DaemonError:
            return time.time_ns()

    # Builds started by run_build ---------------------------------------------------------------------
    def start_build(self, request: dict, pid: int, uid: int | None, progress) -> tuple[RunningBuild, dict]:
        """Starts a build for run_build: on the server, then its logins; raises BuildFailed."""
        wanted_agent = request.get("agent") or ""
        if wanted_agent and wanted_agent != self.settings.name:
            raise BuildFailed(f"--agent {wanted_agent}: this host's agent is {self.settings.name}")
        number = request.get("number")
        required_text = request.get("required_free")
        required = None
        if required_text:
            try:
                required = cleanup.parse_size(str(required_text))
            except cleanup.CleanupError as exc:
                raise BuildFailed(f"--required-free {required_text}: {exc}") from None
        start = protocol.BuildStartRequest(configuration=str(request["configuration"]), number=number)
        try:
            # A start that never reached the server (restarting, say) is asked again; one that may have
            # reached it is not (it could start a second build).
            started = retrying(lambda: self.api.build_start(start), stopped=self.stopped, give_up_after=60,
                               only=ServerUnreachable, say=progress)
        except ServerError as exc:
            raise BuildFailed(_server_words(exc)) from None
        build = RunningBuild(id=started.build.id, number=started.build.number,
                             configuration=started.build.configuration, project=started.build.project,
                             token=started.token, started_by="run_build", pid=pid, pid_started=process_started(pid),
                             # Only root can give the config to run_build's user; otherwise both are the same user.
                             uid=uid if os.geteuid() == 0 and uid != 0 else None)
        # In the book at once: heartbeats list it, so the server knows the agent has it (Free Disk Space
        # may take minutes before the login).
        self.book.add(build)
        progress(f"build {build.label()} (id {build.id}) on agent {self.settings.name}")
        if required:
            try:
                self._free_for_build(build, required, progress)
            except BuildFailed as exc:
                self._report_not_run(build, str(exc))
                self.book.remove(build.id)
                raise
        outcome = self.login(build, started.logins, exact=started.exact_attribution)
        if started.report_token:  # for run_build's command alone: not in the book, nor in any log
            outcome = {**outcome, "build_token": started.report_token}
        return build, outcome

    def _free_for_build(self, build: RunningBuild, required: int, progress) -> None:
        try:
            result = self.free_disk_space_run(
                required, reason=f"build {build.label()} requires {cleanup.human(required)} free", progress=progress)
        except cleanup.CleanupError as exc:
            raise BuildFailed(f"free disk space: {exc}") from None
        if not result.met:
            raise BuildFailed(f"free disk space: {cleanup.human(required)} required on {result.path} but only "
                              f"{cleanup.human(result.free_after)} could be freed: short by "
                              f"{cleanup.human(result.shortfall)}")
        progress(f"{cleanup.human(result.free_after)} free on {result.path} ({cleanup.human(required)} required, "
                 f"{len(result.removed)} image(s) removed)")

    def _report_not_run(self, build: RunningBuild, message: str) -> None:
        try:
            self.api.logins(build.id, build.token, protocol.LoginReport(docker_config="", logged_in=[], registries=[],
                                                                        warnings=[], error=message))
        except ServerError as exc:
            self._warn(f"build {build.label()}: could not tell the server it did not run: {exc}")

    def login(self, build: RunningBuild, logins: list[protocol.RegistryLogin], exact: bool = True) -> dict:
        """Verifies each login with the daemon, writes the build's config and starts its own Docker endpoint
        (`exact`); raises BuildFailed when a required login fails (the build is then recorded as not run,
        and nothing stays on disk)."""
        try:
            self.daemon.ping()
        except DaemonError as exc:
            message = str(exc)
            self._report_not_run(build, message)
            self.book.remove(build.id)
            raise BuildFailed(message) from None
        path = config_dir_create(self.config_root, self._config_dir_name(build), owner=build.uid)
        build.docker_config = str(path)
        self.book.add(build)
        logged_in, warnings, written, expiries = [], [], [], []
        for login in logins:
            try:
                if login.error:
                    raise DaemonError(login.error)
                self.daemon.verify_login(login.server, login.username, login.password)
            except DaemonError as exc:
                message = str(exc) if login.error else (f"login with connection '{login.connection}' to "
                                                        f"{login.registry} failed: {exc}")
                if login.optional:
                    warnings.append(message)
                    continue
                self._erase(build)
                self._report_not_run(build, message)
                self.book.remove(build.id)
                raise BuildFailed(message) from None
            written.append((login.server, login.username, login.password))
            logged_in.append(f"{login.connection} → {login.registry}")
            build.servers.append(login.server)
            if login.expires_at is not None:
                expiries.append(login.expires_at)
        identity = config_write(path, written, host_settings(), owner=build.uid)
        self._config_files.setdefault(build.id, set()).add(identity)
        expires_at = min(expiries) if expiries else None
        build.expires_at = expires_at.isoformat() if expires_at else ""
        build.exact = exact
        docker_host, note = self._endpoint_start(build)
        if note and exact:
            warnings.append(f"Docker operations attributed by time, not exactly: {note}")
        # Followed before its window opens: none of its events is ever decided by time.
        build.window_start = self.daemon.now_nano()
        self.windows.open(build.id, build.window_start)
        self.book.save(build)
        report = protocol.LoginReport(docker_config=str(path), logged_in=logged_in, warnings=warnings,
                                      registries=sorted({login.registry for login in logins
                                                         if login.server in build.servers}),
                                      expires_at=expires_at, docker_host=docker_host,
                                      attribution=build.attribution, attribution_note=note)
        # The report is for the build's page; the command need not wait for it (finish does).
        self._report_logins(build, report)
        return {"docker_config": str(path), "docker_host": docker_host, "engine": self.config.engine,
                "logged_in": logged_in, "warnings": warnings, "build": {"id": build.id, "number": build.number,
                                                "configuration": build.configuration, "label": build.label()},
                "agent": self.settings.name}

    def report_push(self, request: dict) -> dict:
        """Relays a push a build's command reports (report_push) to the server; the agent's answer to it."""
        try:
            report = protocol.PushReport(token=str(request["token"]), reference=str(request["reference"]),
                                         digest=str(request.get("digest") or ""))
        except KeyError as exc:
            return {"op": "error", "message": f"report_push needs {exc.args[0]}"}
        try:
            # Sent again only when it never reached the server: recording it twice records it once anyway.
            recorded = retrying(lambda: self.api.report_push(report), stopped=self.stopped, give_up_after=30,
                                only=ServerUnreachable)
        except ServerError as exc:
            return {"op": "error", "message": _server_words(exc)}
        return {"op": "reported", **protocol.to_json(recorded)}

    REPORT_AFTER = 1.0  # seconds: a build that ends sooner carries its login report in its finish

    def _report_logins(self, build: RunningBuild, report: protocol.LoginReport) -> None:
        """Sends the report for the build's page a moment later, unless the build has finished by then
        (a build step of a few milliseconds then costs one request less)."""
        def send():
            if build.login_report is None:
                return  # the finish took it
            try:
                retrying(lambda: self.api.logins(build.id, build.token, report), stopped=self.stopped,
                         give_up_after=60)
            except ServerError as exc:
                # The finish, if it comes first, carries the report still kept here.
                self._warn(f"build {build.label()}: the server did not take its login report yet: {exc}")
                return
            build.login_report = None
            self.book.save(build)
        # Kept in the book until sent: an agent restarted meanwhile sends it (or the finish carries it).
        build.login_report = protocol.to_json(report)
        self.book.save(build)
        timer = threading.Timer(self.REPORT_AFTER, send)
        timer.daemon = True
        timer.start()

    def finish_build(self, build: RunningBuild, exit_code: int | None = None, lost: str = "") -> dict:
        """Erases the build's config at once, then closes it on the server once it holds its events."""
        report, build.login_report = build.login_report, None
        self._erase(build)
        self._endpoint_stop(build)  # its journal is whole: every event of the build can be decided
        through = self._events_through(build)
        build.finishing = {"exit_code": exit_code, "lost": lost, "events_through": through,
                           "logins": report}
        self.book.save(build)
        return self._send_finish(build, wait_for_server=FINISH_EVENTS_TIMEOUT)

    def _events_through(self, build: RunningBuild) -> int:
        """Every event of the build up to now is in the spool; returns the spool's sequence number then."""
        try:
            end = self.daemon.now_nano()
        except DaemonError:
            end = max(self.stream.last_nano, build.window_start)  # the daemon is gone: what was read is all
        self.windows.close(build.id, end)
        self.stream.sync(end)
        return self.spool.last_seq

    def _send_finish(self, build: RunningBuild, wait_for_server: float) -> dict:
        finishing = build.finishing
        self.spool.wait_acked(finishing["events_through"], timeout=wait_for_server)
        try:
            message = protocol.from_json(protocol.FinishRequest, finishing)
            answer = retrying(lambda: self.api.finish(build.id, build.token, message),
                              stopped=self.stopped, give_up_after=wait_for_server)
        except ServerUnavailable as exc:
            self._warn(f"build {build.label()}: {exc}; its end is reported when the server is back")
            return {"status": "unreported", "summary": None, "error": str(exc)}
        except ServerError as exc:
            # 401: the server closed the build already (lost while the agent was away, say).
            self._forget(build)
            self.windows.forget(build.id)
            return {"status": "closed by the server", "summary": None, "error": _server_words(exc)}
        self._forget(build)
        return {"status": answer.status, "summary": answer.summary}

    def _erase(self, build: RunningBuild) -> None:
        if build.docker_config:
            try:
                config_dir_remove(build.docker_config, self.config_root, ours=self._config_files.pop(build.id, ()))
            except (ValueError, OSError) as exc:
                self._warn(f"build {build.label()}: erasing {build.docker_config} failed: {exc}")
            build.docker_config = ""
            self.book.save(build)

    # A build's own Docker endpoint ---------------------------------------------------------------------
    def _config_dir_name(self, build: RunningBuild) -> str:
        """The build's directory's name, short enough for its endpoint's socket path."""
        room = endpoints.UNIX_PATH_MAX - len(os.fsencode(str(self.config_root))) - len("/-xxxxxxxx/") \
            - len(endpoints.SOCKET_NAME)
        return f"{build.configuration}-{build.number}"[:max(room, 1)]

    def _endpoint_start(self, build: RunningBuild) -> tuple[str, str]:
        """Starts the build's endpoint when it wants one: (its DOCKER_HOST, why attribution is by time or '')."""
        if not build.exact:
            build.attribution = "time"
            return self.daemon.docker_host, "its configuration turned exact attribution off"
        with self._endpoints_lock:  # the heartbeat's _endpoint_ensure sees it started, or not yet at all
            build.journal = str(self.endpoints_dir / f"{build.id}.jsonl")
            try:
                self._endpoint_process(build, build.docker_config)
            except (endpoints.EndpointError, OSError) as exc:
                build.attribution, build.journal = "time", ""
                self._warn(f"build {build.label()}: no Docker endpoint of its own: {exc}")
                return self.daemon.docker_host, f"no Docker endpoint of its own: {exc}"
            build.attribution = "exact"
            self.attributor.follow(build.id, build.journal)
            self.book.save(build)
        return f"unix://{endpoints.socket_path(build.docker_config)}", ""

    def _endpoint_process(self, build: RunningBuild, directory: str) -> None:
        """Starts the build's endpoint process (on its socket and journal); EndpointError if it does not listen."""
        with self._endpoints_lock:
            process = endpoints.start(directory=directory,
                                      daemon_path=endpoints.daemon_socket(self.daemon.docker_host),
                                      journal=build.journal, log=self.endpoints_dir / f"{build.id}.log",
                                      owner=build.uid)
            self._endpoints[build.id] = process
            build.endpoint_pid, build.endpoint_started = endpoints.identity(process)
            self.book.save(build)

    def _endpoint_stop(self, build: RunningBuild) -> None:
        with self._endpoints_lock:
            build.journal_closed = True
            if build.endpoint_pid:
                endpoints.stop(build.endpoint_pid, build.endpoint_started, self._endpoints.pop(build.id, None))
                build.endpoint_pid, build.endpoint_started = 0, ""
                self.book.save(build)

    def _endpoint_ensure(self, build: RunningBuild) -> None:
        """A running build's endpoint runs: one a previous agent started goes on, one that died is started
        again on the same socket (the build's DOCKER_HOST) and journal."""
        with self._endpoints_lock:
            if build.attribution != "exact" or not build.journal or build.journal_closed:
                return
            directory = build.docker_config  # read once: a finish may erase it meanwhile
            if directory and not process_alive(build.endpoint_pid, build.endpoint_started) and os.path.isdir(directory):
                self._endpoints.pop(build.id, None)
                try:
                    self._endpoint_process(build, directory)
                except (endpoints.EndpointError, OSError) as exc:
                    self._warn(f"build {build.label()}: its Docker endpoint could not be started again: {exc}")
            self.attributor.follow(build.id, build.journal)

    def _forget(self, build: RunningBuild) -> None:
        """The build is done with on this agent: out of the book, its journal read for the last time."""
        self.book.remove(build.id)
        if build.journal:
            self.attributor.forget(build.id)
            self.windows.forget(build.id)  # no event of its is still to come: none goes to it by time
            for path in (build.journal, self.endpoints_dir / f"{build.id}.log"):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def attach(self, build_id: int) -> None:
        with self._clients_lock:
            self._clients.add(build_id)

    def client_gone(self, build: RunningBuild) -> None:
        """run_build's connection ended without a finish: lost, unless it lives and comes back."""
        with self._clients_lock:
            self._clients.discard(build.id)

        def attached() -> bool:
            with self._clients_lock:
                return build.id in self._clients

        def watch():
            while process_alive(build.pid, build.pid_started):
                if self.stopped.wait(0.5) or attached() or self.book.get(build.id) is not build:
                    return
            if self.book.get(build.id) is build and not attached():
                self.finish_build(build, lost="run_build ended without finishing the build (killed?); its "
                                              "credentials were erased")
        threading.Thread(target=watch, name=f"watch-{build.id}", daemon=True).start()

    def _adopt(self) -> None:
        """Builds of a previous run of the agent: those whose run_build lives are adopted (it reconnects)."""
        for build in self.book.all():
            if build.finishing is not None:
                self._endpoint_stop(build)
                continue  # the heartbeat sends its finish again
            if build.started_by == "run_build" and not process_alive(build.pid, build.pid_started):
                self._erase(build)
                self._endpoint_stop(build)
                build.finishing = {"exit_code": None, "events_through": self.spool.last_seq,
                                   "lost": "run_build ended while the agent was away; its credentials were erased"}
                self.book.save(build)
                continue
            if build.window_start:
                self._endpoint_ensure(build)
                self.windows.open(build.id, build.window_start)
                self._adopted.add(build.id)
            if build.login_report is not None:
                self._report_logins(build, protocol.from_json(protocol.LoginReport, build.login_report))
            if build.started_by == "run_build":
                self.client_gone(build)  # lost if its run_build dies before it reconnects

    # Events ---------------------------------------------------------------------------------------------
    def _spool_record(self, record: dict) -> None:
        self.uses.record(record)
        if len(json.dumps(record)) > RECORD_BYTES:
            record = {**record, "attributes": {"dockersupport": "attributes dropped: larger than 64 KiB"}}
        self.spool.append(record)

    def _send_events(self):
        position_saved = 0.0
        while not self.stopped.is_set():
            batch = self.spool.batch(self._send_limit, wait=1.0)
            if time.monotonic() - position_saved > 2 and self.stream is not None:
                self.spool.save_position(self.stream.resume_nano)
                position_saved = time.monotonic()
            if not batch:
                continue
            batch = _within(batch, BATCH_BYTES)
            message = protocol.EventBatch(first_seq=batch[0]["seq"], last_seq=batch[-1]["seq"],
                                          records=[{k: v for k, v in entry.items() if k != "seq"} for entry in batch])
            try:
                # The same batch until it is taken: the server knows batches by their first number.
                answer = retrying(lambda: self.api.events(message), stopped=self.stopped)
            except ServerUnavailable:
                return
            except ServerError as exc:
                if len(batch) > 1 and exc.status == 400:
                    self._send_limit = max(1, len(batch) // 2)  # send halves until the bad record is alone
                    continue
                self._warn(f"the server refused an event ({exc}); it is dropped")
                answer = protocol.EventAck(acked=message.last_seq)
            self._send_limit = protocol.EVENT_BATCH_SIZE
            self.spool.ack(answer.acked)

    # Heartbeat ------------------------------------------------------------------------------------------
    def _beat(self):
        while not self.stopped.wait(self.settings.heartbeat_interval * (0.8 + random.random() * 0.4)):
            ok, error, version = self.daemon.state()
            running = [b.id for b in self.book.all() if b.finishing is None]
            try:
                free = cleanup.free_bytes(*self._data_path())
            except cleanup.CleanupError:
                free = None
            try:
                answer = self.api.heartbeat(protocol.HeartbeatRequest(
                    daemon=protocol.DaemonState(ok=ok, error=error, version=version,
                                                docker_host=self.daemon.docker_host),
                    running_builds=running, free_bytes=free))
            except ServerUnavailable as exc:
                self._warn(f"heartbeat: {exc}")
                continue
            if answer.cleanup is not None:
                self.settings.cleanup = answer.cleanup  # an admin may have changed them
            for build_id in answer.ended_builds:
                build = self.book.get(build_id)
                if build is not None and build.finishing is None:
                    # Closed on the server (timed out, lost while the agent was away): nothing of it stays.
                    self._erase(build)
                    self._endpoint_stop(build)
                    self._forget(build)
                    self.windows.close(build_id, self._daemon_now_or_clock())
            for build in self.book.all():
                if build.finishing is not None:
                    self._send_finish(build, wait_for_server=5)
                    continue
                self._endpoint_ensure(build)
                if build.expires_at and datetime.fromisoformat(build.expires_at) - REFRESH_LEAD < _now():
                    self._refresh(build)
            self.uses.forget_builds_except(build.id for build in self.book.all())
            self._keep_free_check(free)

    def _refresh(self, build: RunningBuild) -> None:
        """Fresh tokens (ECR) in a running build's config, before its expiring ones run out."""
        try:
            logins = self.api.credentials(build.id, build.token).logins
        except ServerError as exc:
            self._warn(f"build {build.label()}: refreshing its tokens failed: {exc}")
            return
        fresh = [login for login in logins if login.server in build.servers and not login.error]
        if not build.docker_config or not fresh:
            return
        identity = config_write(Path(build.docker_config), [(x.server, x.username, x.password) for x in fresh],
                                host_settings(), owner=build.uid, ours=self._config_files.get(build.id, ()))
        self._config_files.setdefault(build.id, set()).add(identity)
        expiries = [login.expires_at for login in fresh if login.expires_at is not None]
        build.expires_at = min(expiries).isoformat() if expiries else ""
        self.book.save(build)

    # Jobs -----------------------------------------------------------------------------------------------
    def _poll_jobs(self):
        while not self.stopped.is_set():
            try:
                jobs = retrying(lambda: self.api.jobs(self.settings.job_wait, self.settings.session),
                                stopped=self.stopped)
            except ServerUnavailable:
                return
            for job in jobs:
                threading.Thread(target=self._guarded_job(job), name=f"job-{job.id}", daemon=True).start()

    def _guarded_job(self, job: protocol.Job):
        def run():
            try:
                result = self._run_job(job)
            except Exception as exc:  # noqa: BLE001 - the server hears of it; the agent goes on
                log.exception("job %s (%s) failed", job.id, job.kind)
                result = protocol.JobResult(ok=False, error=str(exc) or type(exc).__name__)
            try:
                retrying(lambda: self.api.job_done(job.id, result), stopped=self.stopped, give_up_after=300)
            except ServerError as exc:
                self._warn(f"job {job.id}: the server did not take its result: {exc}")
        return run

    def _run_job(self, job: protocol.Job) -> protocol.JobResult:
        if job.kind == protocol.JobKind.LOGIN:
            info = job.build
            build = self.book.get(info.id)
            if build is not None:  # a login job given again (the agent restarted): start clean
                self._erase(build)
                self._endpoint_stop(build)
                self._forget(build)
            build = RunningBuild(id=info.id, number=info.number, configuration=info.configuration,
                                 project=info.project, token=job.token, started_by="api",
                                 uid=self.config.api_build_uid)
            try:
                credentials = self.api.credentials(build.id, build.token)
                outcome = self.login(build, credentials.logins, exact=credentials.exact_attribution)
            except BuildFailed as exc:
                return protocol.JobResult(ok=False, error=str(exc))
            return protocol.JobResult(ok=True, result=outcome)
        if job.kind == protocol.JobKind.LOGOUT:
            build = self.book.get(job.build.id) if job.build else None
            if build is None:
                if not job.token:
                    return protocol.JobResult(ok=True, result={"status": "already closed"})
                info = job.build
                build = RunningBuild(id=info.id, number=info.number, configuration=info.configuration,
                                     project=info.project, token=job.token, started_by="api")
                self.book.add(build)
            elif job.token:
                build.token = job.token
            outcome = self.finish_build(build, exit_code=job.exit_code, lost=job.lost)
            return protocol.JobResult(ok=True, result={"status": outcome["status"]})
        if job.kind == protocol.JobKind.FREE_DISK_SPACE:
            try:
                result = self.free_disk_space_run(job.required_bytes, reason=job.reason or "free_disk_space",
                                                  dry_run=job.dry_run)
            except cleanup.CleanupError as exc:
                return protocol.JobResult(ok=False, error=str(exc))
            return protocol.JobResult(ok=True, result={
                "met": result.met, "free_before": result.free_before, "free_after": result.free_after,
                "removed": len(result.removed), "kept": len(result.kept), "shortfall": result.shortfall,
                "text": cleanup.result_text(result, job.dry_run)})
        return protocol.JobResult(ok=False, error=f"this agent does not know jobs of kind {job.kind}")

    # Free Disk Space -------------------------------------------------------------------------------------
    def _data_path(self) -> tuple[str, str]:
        return cleanup.data_path(self.settings.docker_data_path if self.settings else "", self.config.data_path)

    def free_disk_space_run(self, required: int, *, reason: str, dry_run: bool = False,
                            progress=None) -> cleanup.Result:
        path, origin = self._data_path()
        policy = self._cleanup_policy()
        try:
            tracked = self.api.tracked_images()
        except ServerError as exc:
            raise cleanup.CleanupError(f"the server did not list this agent's images: {exc}") from None
        try:
            client = self.daemon.new_client()
        except DaemonError as exc:
            raise cleanup.CleanupError(str(exc)) from None
        try:
            with contextlib.nullcontext() if dry_run else self._cleanup_lock:
                result = cleanup.images_remove_until_free(client, tracked, required, path, origin, dry_run=dry_run,
                                                          progress=progress, policy=policy)
        except DaemonError as exc:
            raise cleanup.CleanupError(str(exc)) from None
        finally:
            client.close()
        if not dry_run:
            try:
                self.api.cleanup(protocol.CleanupReport(
                    reason=reason[:300], data_path=path, required_bytes=required, free_before=result.free_before,
                    free_after=result.free_after, removed=result.removed, met=result.met, kept=result.kept))
            except ServerError as exc:
                self._warn(f"the server did not take the Free Disk Space record: {exc}")
        return result

    def _cleanup_policy(self) -> cleanup.Policy:
        """The agent's settings and its running builds, for what keeps an image; CleanupError for a bad keep pattern."""
        settings = self.settings.cleanup
        return cleanup.Policy(keep_patterns=cleanup.keep_patterns_parse(settings.keep_patterns),
                              min_age=max(settings.min_image_age, 0), now=self._daemon_now,
                              build_use=self._image_build_use, refresh=self._events_read, last_use=self.uses.last_used)

    def _daemon_now(self) -> datetime:
        return datetime.fromtimestamp(self._daemon_now_or_clock() / 1e9, timezone.utc)

    def _events_read(self) -> bool:
        """Every event of the daemon up to now has gone through the stream (and so into self.uses)."""
        try:
            until = self.daemon.now_nano()
        except DaemonError:
            return False
        return self.stream is not None and self.stream.sync(until)

    def _image_build_use(self, names: set[str], last_used: datetime | None) -> str:
        """Why a build running on this agent may be using the image known by `names`, or ''."""
        running = {build.id: build for build in self.book.all() if build.finishing is None}
        for build_id in self.uses.builds_using(names, sorted(running)):
            return f"build {running[build_id].label()}, running on this agent, used it"
        if last_used is not None:
            # What an adopted build did before this agent started is not known here: any use of the
            # image by a build since it started may be its.
            for build_id in sorted(self._adopted & running.keys()):
                build = running[build_id]
                if build.window_start and last_used.timestamp() * 1e9 >= build.window_start:
                    return (f"used by a build since build {build.label()} started, which runs on this agent "
                            "(started before the agent's restart: what it used before is not known)")
        return ""

    def _keep_free_check(self, free: int | None) -> None:
        """Free Disk Space on the agent's own when less than its keep-free threshold is free, as docuum does:
        at most every KEEP_FREE_EVERY seconds, builds running or not (the checks keep what they use)."""
        keep = self.settings.cleanup.keep_free_bytes
        if not keep or free is None or free >= keep or self._cleanup_lock.locked():
            return
        if self._keep_free_at is not None and time.monotonic() - self._keep_free_at < KEEP_FREE_EVERY:
            return
        self._keep_free_at = time.monotonic()
        threading.Thread(target=self._keep_free_run, args=(keep, free), name="keep-free", daemon=True).start()

    def _keep_free_run(self, keep: int, free: int) -> None:
        try:
            result = self.free_disk_space_run(keep, reason=f"keep free threshold: {cleanup.human(free)} free, "
                                                           f"{cleanup.human(keep)} to keep")
        except cleanup.CleanupError as exc:
            self._warn(f"keep free threshold: {exc}")
            return
        except Exception:  # noqa: BLE001 - the agent goes on; the next beat tries again later
            log.exception("keep free threshold: Free Disk Space failed")
            return
        if not result.met:
            self._warn(f"keep free threshold: {cleanup.human(keep)} to keep free on {result.path}, "
                       f"{cleanup.human(result.free_after)} free after removing what could go")


def _within(batch: list[dict], limit: int) -> list[dict]:
    """The first records of the batch that fit in `limit` bytes of JSON (at least one)."""
    size = 0
    for count, entry in enumerate(batch):
        size += len(json.dumps(entry))
        if size > limit and count:
            return batch[:count]
    return batch


def _server_words(exc: ServerError) -> str:
    """What the server said of a refused request, without the wrapping ('HTTP 400: field: ...')."""
    text = str(exc)
    if text.startswith("HTTP 400: "):
        text = text.removeprefix("HTTP 400: ")
        field, sep, rest = text.partition(": ")
        if sep and field.isidentifier():
            text = rest
    return text


def _now() -> datetime:
    return datetime.now(timezone.utc)
