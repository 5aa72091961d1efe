"""run_build: runs a build step's command as a build, through the agent of this host.

    python manage.py run_build CONFIG [--agent AGENT] [--number N] [--required-free SIZE] -- COMMAND [ARG...]

The small client a CI calls on every build step: the standard library only, no Django, no
server settings. It asks the local agent (its unix socket) to start the build and log it in,
runs COMMAND with the build's DOCKER_CONFIG and the agent's DOCKER_HOST, asks the agent to
finish the build, prints the Docker Info summary and exits with COMMAND's exit code. COMMAND's
environment never holds the server's settings nor any token but the build's report token
(DOCKERSUPPORT_BUILD_TOKEN, for `manage.py report_push`). If the agent restarts meanwhile,
the command goes on and this client reconnects.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

LOGIN_FAILED_EXIT_CODE = 1
COMMAND_NOT_FOUND_EXIT_CODE = 127
RECONNECT_FOR = 600  # seconds run_build waits for a restarted agent
# Never in a build's environment: the server's own settings, and anything of the agent's.
SECRET_PREFIXES = ("DOCKERSUPPORT_", "CELERY_", "DJANGO_")
SECRET_NAMES = {"SECRET_KEY", "DATABASE_URL", "CACHE_URL", "REDIS_URL"}


def agent_dir() -> str:
    """DOCKERSUPPORT_AGENT_DIR, else the default the agent uses too."""
    configured = os.environ.get("DOCKERSUPPORT_AGENT_DIR")
    if configured:
        return configured
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/dockersupport-agent"
    return os.path.join(os.path.expanduser("~"), ".local", "state", "dockersupport-agent")


ENDPOINT_SOCKET = "docker.sock"  # a build's own Docker endpoint, in its config folder (agent.endpoints.SOCKET_NAME)


def command_environment(environ, docker_config: str, docker_host: str, engine: str = "docker") -> dict:
    environment = {k: v for k, v in environ.items()
                   if not k.startswith(SECRET_PREFIXES) and k not in SECRET_NAMES}
    environment["DOCKER_CONFIG"] = docker_config
    # The podman CLI, buildah and skopeo read credentials from REGISTRY_AUTH_FILE (containers-auth.json), whose
    # format is config.json's `auths`: the build's own config serves them too, and is erased with it.
    environment["REGISTRY_AUTH_FILE"] = os.path.join(docker_config, "config.json")
    if docker_host:
        environment["DOCKER_HOST"] = docker_host
    if engine == "podman" and docker_host == "unix://" + os.path.join(docker_config, ENDPOINT_SOCKET):
        # The build's own endpoint (exact attribution) in front of Podman: the podman CLI goes remote through it too
        # (Podman's libpod API, which the endpoint journals) rather than to Podman's storage directly, where nothing
        # records it. In front of Docker, which has no libpod API, the podman CLI is left as it is.
        environment["CONTAINER_HOST"] = docker_host
    return environment


# What the command gets of the build to report its pushes (manage.py report_push): the build's report token, which
# opens that one request for that build while it runs, and the agent's socket it is sent through.
BUILD_TOKEN_VARIABLE = "DOCKERSUPPORT_BUILD_TOKEN"
AGENT_SOCKET_VARIABLE = "DOCKERSUPPORT_AGENT_SOCKET"


def report_environment(environment: dict, build_token: str, socket_path: str) -> dict:
    """The command's environment with what report_push needs; an older agent gives no token, and then nothing."""
    if build_token:
        environment = {**environment, BUILD_TOKEN_VARIABLE: build_token, AGENT_SOCKET_VARIABLE: socket_path}
    return environment


class AgentGone(Exception):
    pass


class Channel:
    """The connection to the local agent; reconnects (resume) when the agent restarts."""

    def __init__(self, path: str):
        self.path = path
        self.sock = self.reader = None
        self.build_id = None
        self.answers: queue.Queue = queue.Queue()
        self._finished = threading.Event()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock, self.reader = sock, sock.makefile("rb")

    def send(self, message: dict):
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def read(self) -> dict:
        line = self.reader.readline()
        if not line:
            raise AgentGone()
        return json.loads(line)

    def follow(self):
        """After the start: reads the agent's answers into `answers`; reconnects when the agent goes away."""
        threading.Thread(target=self._follow, name="agent-channel", daemon=True).start()

    def _follow(self):
        while True:
            try:
                self.answers.put(self.read())
                continue
            except (AgentGone, OSError, ValueError):
                pass
            if self._finished.is_set():
                return
            self.answers.put({"op": "disconnected"})
            if not self._reconnect():
                self.answers.put({"op": "error", "message": f"the agent did not come back within {RECONNECT_FOR} s"})
                return
            self.answers.put({"op": "reconnected"})

    def _reconnect(self) -> bool:
        deadline = time.monotonic() + RECONNECT_FOR
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                self.connect()
                self.send({"op": "resume", "build": self.build_id})
                answer = self.read()
            except (OSError, AgentGone, ValueError):
                continue
            if answer.get("op") == "resumed":
                return True
            self.answers.put(answer)
            return False
        return False

    def finish(self, exit_code: int) -> dict:
        """Sends the finish (again after a reconnect) and waits for the agent's answer."""
        while True:
            try:
                self.send({"op": "finish", "exit_code": exit_code})
            except OSError:
                pass  # the agent is away: the follower reconnects, then we send again
            while True:
                answer = self.answers.get()
                if answer["op"] == "finished":
                    self._finished.set()
                    return answer
                if answer["op"] == "error":
                    return answer
                if answer["op"] == "reconnected":
                    break


USAGE = "usage: manage.py run_build CONFIG [--agent AGENT] [--number N] [--required-free SIZE] -- COMMAND [ARG...]"
HELP = f"""{USAGE}

Run COMMAND as a build of CONFIG, logged in to the configuration's registries, through this host's agent.

  CONFIG                 the build configuration's id
  --agent AGENT          the agent this must run on (default: this host's agent)
  --number N             the build number (default: the next one)
  --required-free SIZE   free this much on the Docker data volume first (like 500M, 20G)
"""


class UsageError(Exception):
    pass


def options_parse(argv: list[str], options: dict, names: dict[str, str], positional: str, extra: str) -> dict:
    """`options` filled from argv: `--name VALUE` or `--name=VALUE` of `names` (option → key), and one positional
    argument (key `positional`); UsageError for anything else (`extra`: what to say of a second positional one).
    By hand rather than argparse, which costs a tenth of run_build's start."""
    args = iter(argv)
    for arg in args:
        name, sep, value = arg.partition("=")
        if name in names:
            if not sep:
                value = next(args, None)
                if value is None:
                    raise UsageError(f"{name} needs a value")
            options[names[name]] = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        elif options[positional] is None:
            options[positional] = arg
        else:
            raise UsageError(f"unexpected {arg!r}: {extra}")
    return options


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    """The options and COMMAND."""
    command = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    if "-h" in argv or "--help" in argv:
        raise SystemExit(HELP)
    options = options_parse(argv, {"configuration": None, "agent": None, "number": None, "required_free": None},
                            {"--agent": "agent", "--number": "number", "--required-free": "required_free"},
                            "configuration", "the command goes after --")
    if options["configuration"] is None:
        raise UsageError("no CONFIG given")
    if not command:
        raise UsageError("no COMMAND given: run_build CONFIG -- COMMAND [ARG...]")
    if options["number"] is not None:
        number = options["number"]
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= 2_147_483_647:
            raise UsageError(f"--number {number}: a build number is from 1 to 2147483647")
        options["number"] = int(number)
    return options, command


def main(argv: list[str], out=sys.stdout, err=sys.stderr) -> int:
    try:
        options, command = parse(argv)
    except UsageError as exc:
        err.write(f"{USAGE}\nmanage.py run_build: error: {exc}\n")
        return 2
    path = os.path.join(agent_dir(), "agent.sock")
    channel = Channel(path)
    try:
        channel.connect()
    except OSError as exc:
        err.write(f"dockersupport: no agent answers at {path} ({exc.strerror}): start it with `python manage.py "
                  "agent --server URL --token-file FILE`, or set DOCKERSUPPORT_AGENT_DIR to its folder\n"
                  "dockersupport: the command was not run.\n")
        return LOGIN_FAILED_EXIT_CODE
    start = {"op": "start", **options}
    # A signal before the command runs ends run_build; the agent then records the build as lost.
    channel.send(start)
    try:
        while True:
            answer = channel.read()
            if answer["op"] == "progress":
                out.write(f"dockersupport: {answer['message']}\n")
                out.flush()
            elif answer["op"] == "started":
                break
            else:
                err.write(f"dockersupport: {answer.get('message', answer)}\ndockersupport: the command was not run.\n")
                return LOGIN_FAILED_EXIT_CODE
    except (AgentGone, OSError, ValueError):
        err.write("dockersupport: the agent went away while starting the build\ndockersupport: the command was not "
                  "run.\n")
        return LOGIN_FAILED_EXIT_CODE
    channel.build_id = answer["build"]["id"]
    label = answer["build"]["label"]
    for line in answer["logged_in"]:
        out.write(f"dockersupport: logged in with {line}\n")
    for warning in answer["warnings"]:
        err.write(f"dockersupport: warning: {warning}\n")
    out.flush()
    channel.follow()
    environment = command_environment(os.environ, answer["docker_config"], answer["docker_host"],
                                      answer.get("engine") or "docker")
    exit_code = run_command(command, report_environment(environment, answer.get("build_token", ""), path), err)
    finished = channel.finish(exit_code)
    if finished["op"] == "error" or finished.get("summary") is None:
        err.write(f"dockersupport: build {label}: {finished.get('message') or finished.get('error')}\n")
        out.write(f"dockersupport: logged out; build {label} ended with exit code {exit_code}\n")
        return exit_code
    out.write(f"dockersupport: logged out; build {label} {finished['status']} with exit code {exit_code}\n")
    out.write(summary_text(finished["summary"]))
    out.flush()
    return exit_code


def run_command(command: list[str], environment: dict, err) -> int:
    """Runs COMMAND; SIGINT/SIGTERM go to it (a second one kills it). Returns its exit code (128+N if killed)."""
    child: list[subprocess.Popen] = []
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        if child and child[0].poll() is None:
            child[0].send_signal(signal.SIGKILL if len(received) > 1 else signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            child.append(subprocess.Popen(command, env=environment))
        except OSError as exc:
            err.write(f"dockersupport: cannot run {command[0]!r}: {exc.strerror}\n")
            return COMMAND_NOT_FOUND_EXIT_CODE
        returncode = child[0].wait()
        return returncode if returncode >= 0 else 128 - returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
