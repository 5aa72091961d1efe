"""Command lines of the build host's side: `manage.py agent ...`, `manage.py run_build ...` and, in a build's
command, `manage.py report_push ...`.

manage.py hands these over before Django loads: a build host needs none of the server's
settings, and run_build starts on every build step.
"""

import sys

ENGINES = ("docker", "podman")


def agent_main(argv: list[str]) -> int:
    import argparse
    import os
    import signal
    from pathlib import Path

    from .client import agent_dir

    parser = argparse.ArgumentParser(
        prog="manage.py agent",
        description="The dockersupport agent of this build host: logs builds in and out, records their Docker "
                    "operations, frees disk space. It needs only its own token (manage.py agent_token NAME on the "
                    "server) and its Docker daemon (DOCKER_HOST).")
    parser.add_argument("--server", required=True, metavar="URL", help="the dockersupport server, like https://ci.example.com")
    parser.add_argument("--token-file", required=True, metavar="FILE", help="the file holding this agent's token")
    parser.add_argument("--ca-file", metavar="FILE", default=os.environ.get("DOCKERSUPPORT_SERVER_CA", ""),
                        help="CA certificates that verify the server (a private CA); default: the system's")
    parser.add_argument("--dir", metavar="DIR", default=agent_dir(),
                        help="the agent's folder: socket, spool, build configs (DOCKERSUPPORT_AGENT_DIR)")
    parser.add_argument("--socket-group", default=os.environ.get("DOCKERSUPPORT_AGENT_SOCKET_GROUP", ""),
                        help="the group whose members may run builds through the agent's socket")
    parser.add_argument("--api-build-user", default=os.environ.get("DOCKERSUPPORT_API_BUILD_USER", ""),
                        help="the user whose CI jobs read API-driven builds' DOCKER_CONFIG (an agent running as root)")
    parser.add_argument("--engine", choices=ENGINES, default=os.environ.get("DOCKERSUPPORT_ENGINE") or "docker",
                        help="what serves DOCKER_HOST: Docker's daemon, or Podman's Docker-compatible API "
                             "(`podman system service`); DOCKERSUPPORT_ENGINE; default docker")
    args = parser.parse_args(argv)
    if args.engine not in ENGINES:
        parser.error(f"DOCKERSUPPORT_ENGINE={args.engine}: choose one of {', '.join(ENGINES)}")
    import logging

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "docker", "requests"):  # they log headers and bodies at DEBUG
        logging.getLogger(noisy).setLevel(logging.INFO)
    token = _read_token(parser, Path(args.token_file))
    from .main import Agent, AgentConfig

    config = AgentConfig(server=args.server, token=token, directory=Path(args.dir).absolute(),
                         docker_host=os.environ.get("DOCKER_HOST", ""),
                         data_path=os.environ.get("DOCKERSUPPORT_DOCKER_DATA_PATH", ""), ca_file=args.ca_file,
                         socket_group=args.socket_group, api_build_uid=_uid(parser, args.api_build_user),
                         engine=args.engine)
    agent = Agent(config, say=lambda text: print(text, flush=True))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())
    return agent.run()


def _uid(parser, user: str) -> int | None:
    if not user:
        return None
    import os
    import pwd

    if os.geteuid() != 0:
        parser.error("--api-build-user: only an agent running as root can give a build's config to another user")
    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        parser.error(f"--api-build-user {user}: no such user")


def _read_token(parser, path) -> str:
    import stat

    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        parser.error(f"--token-file {path}: {exc.strerror}")
    if not token:
        parser.error(f"--token-file {path}: the file is empty; put the token of `manage.py agent_token NAME` in it")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"dockersupport agent: warning: {path} can be read by others; chmod 600 it", file=sys.stderr)
    return token


def main(command: str, argv: list[str]) -> int:
    try:
        if command == "agent":
            return agent_main(argv)
        if command == "report_push":
            from .report import main as report_push

            return report_push(argv)
        from .client import main as run_build

        return run_build(argv)
    except KeyboardInterrupt:
        return 130
