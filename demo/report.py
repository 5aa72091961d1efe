"""`make demo`'s last word (scripts/demo.sh runs it after applying demo/settings.yaml): what was loaded,
the command that runs a demo build, and what this machine lacks for it, each checked for real (the
Docker daemon, the demo registry, the agent of `make run`, the docker command). Exits 0 either way:
the data is loaded; what is missing is said."""

import json
import os
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dockersupport_site.settings")

import django  # noqa: E402

django.setup()

from agent.daemon import Daemon  # noqa: E402  (the one module that talks to a Docker daemon)
from builds.models import Agent, BuildConfiguration  # noqa: E402
from builds.settings_file import SettingsFileError, parse_settings  # noqa: E402
from connections.models import Connection, Project  # noqa: E402
from connections.services import connection_test  # noqa: E402

SETTINGS_FILE = ROOT / "demo" / "settings.yaml"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # Docker's own default on Linux and macOS
DEMO_COMMAND = ["docker", "run", "--rm", "busybox:1", "echo", "hello from a demo build"]


def loaded(data: dict) -> tuple[list[str], list[BuildConfiguration], list[Agent]]:
    """Lines saying what the file's projects, connections, configurations and agents now are in the database."""
    lines, configurations, agents = [], [], []

    def project_lines(entries, parent=None):
        for entry in entries or []:
            project = Project.objects.get(ident=entry["id"])
            lines.append(f"project {project.ident} ({project.name})"
                         + (f", a subproject of {parent.ident}" if parent else ""))
            for connection in Connection.objects.filter(project=project).order_by("ident"):
                # Never the password: only that one is stored (encrypted).
                user = f", user {connection.username}" if connection.username else ""
                named = f" ({connection.name})" if connection.name else ""
                lines.append(f"  connection {connection.ident}{named}: {connection.get_type_display()} "
                             f"{connection.registry_address or 'Docker Hub'}{user}")
            for configuration in BuildConfiguration.objects.filter(project=project).order_by("ident"):
                configurations.append(configuration)
                logins = [f"{login.connection.ident} ({'optional' if login.optional else 'required'})"
                          for login in configuration.logins.select_related("connection")]
                lines.append(f"  build configuration {configuration.ident} ({configuration.name}): logs in to "
                             f"{', '.join(logins) or 'no registry'}")
            project_lines(entry.get("subprojects"), project)

    project_lines(data.get("projects"))
    for entry in data.get("agents") or []:
        agent = Agent.objects.get(name=entry["name"])
        agents.append(agent)
        serves = ("every project (shared)" if agent.shared and not agent.projects.exists()
                  else ", ".join(sorted(agent.projects.values_list("ident", flat=True))) or "no project")
        daemon = agent.docker_host or f"its own DOCKER_HOST, else {DEFAULT_DOCKER_HOST}"
        lines.append(f"agent {agent.name}: serves {serves}; Docker daemon: {daemon}")
    return lines, configurations, agents


def check_daemon(agent: Agent) -> tuple[bool, str]:
    # make run hands its own DOCKER_HOST to the agent, which wins over the agent's setting (SPEC).
    where = os.environ.get("DOCKER_HOST") or agent.docker_host or DEFAULT_DOCKER_HOST
    advice = "start Docker, or set DOCKER_HOST to a daemon's address for `make run` and `make demo`"
    if where.startswith("unix://") and not os.path.exists(where.removeprefix("unix://")):
        return False, f"no Docker daemon at {where}: {where.removeprefix('unix://')} does not exist; {advice}"
    answers, error, version = Daemon(where).state()
    if answers:
        return True, f"the Docker daemon at {where} answers (Docker {version})"
    return False, f"no Docker daemon answers at {where}: {error}; {advice}"


def check_registry(connection: Connection, optional: bool) -> tuple[bool, str]:
    result = connection_test(connection)
    if result.ok:
        return True, f"the demo registry at {connection.registry_address} accepts connection {connection.ident}"
    consequence = ("the build runs without it, with a warning (its login is optional)" if optional
                   else "the build cannot start without it (its login is required)")
    return False, (f"demo registry not reachable at {connection.registry_address}: {result.error}; {consequence}. "
                   "To have one: docker run -d -p 5000:5000 registry:2 (or set DEMO_REGISTRY and make demo again)")


def check_agent(agent: Agent, agent_dir: str) -> tuple[bool, str]:
    path = os.path.join(agent_dir, "agent.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b'{"op": "ping"}\n')
            answer = json.loads(sock.makefile("rb").readline() or b"{}")
    except (OSError, ValueError) as exc:
        return False, (f"the agent {agent.name} is not running (nothing answers at {path}: "
                       f"{getattr(exc, 'strerror', None) or exc}): start `make run` in another terminal")
    if answer.get("agent") != agent.name:
        return False, (f"the agent at {path} is {answer.get('agent')!r}, not {agent.name}: start `make run` with "
                       f"AGENT_NAME={answer.get('agent')} make demo, or make run without AGENT_NAME")
    return True, f"the agent {agent.name} answers at {path}"


def check_docker_command() -> tuple[bool, str]:
    found = shutil.which("docker")
    if found:
        return True, f"the docker command is {found}"
    return False, "no docker command on PATH: the demo build's command needs it (install the Docker CLI)"


def main() -> int:
    try:
        data = parse_settings(SETTINGS_FILE.read_text())
    except SettingsFileError as exc:  # its ${VARIABLES} are demo.sh's
        sys.exit(f"{SETTINGS_FILE}: {'; '.join(exc.errors)} (run it with `make demo`, which sets them)")
    lines, configurations, agents = loaded(data)
    print(f"\nLoaded from {SETTINGS_FILE.relative_to(ROOT)}:")
    for line in lines:
        print(f"  {line}")

    configuration, agent = configurations[0], agents[0]
    agent_dir = os.environ.get("DEMO_AGENT_DIR") or str(ROOT / "var" / "agent")
    python = os.environ.get("PYTHON") or sys.executable
    port = os.environ.get("PORT", "8000")
    command = " ".join(f"'{arg}'" if " " in arg else arg for arg in DEMO_COMMAND)
    print("\nTo run a demo build:")
    print(f"  1. make run   (in another terminal: the admin at http://127.0.0.1:{port}/admin/ and the agent "
          f"{agent.name})")
    print(f"  2. DOCKERSUPPORT_AGENT_DIR={agent_dir} {python} manage.py run_build {configuration.ident} "
          f"--agent {agent.name} -- {command}")
    print(f"  3. its Docker Info: http://127.0.0.1:{port}/admin/builds/build/ (the build, then its Docker Info tab)")

    checks = [check_daemon(agent), check_agent(agent, agent_dir), check_docker_command()]
    for login in configuration.logins.select_related("connection"):
        checks.append(check_registry(login.connection, login.optional))
    print("\nOn this machine:")
    for ok, text in checks:
        print(f"  {'ok     ' if ok else 'MISSING'}  {text}")
    missing = sum(1 for ok, _ in checks if not ok)
    print("Nothing is missing: run the demo build above." if not missing
          else f"{missing} thing{'s are' if missing != 1 else ' is'} missing for the demo build (MISSING above).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
