"""report_push: a build's command reports a push its Docker daemon never saw.

    python manage.py report_push REFERENCE [--digest sha256:...] [--server URL [--ca-file FILE]]

buildx with a container driver, kaniko, buildah and `podman push` talk to the registry themselves, so
no push event reaches the agent. Run inside the build's command, this records the push as the build's:
in its Docker Info, and cleaned up with it. It needs the build's report token, DOCKERSUPPORT_BUILD_TOKEN
(run_build sets it for its command; an API-driven build's is the `build_token` its start answered), and
sends the report through the host's agent (DOCKERSUPPORT_AGENT_SOCKET, which run_build sets too), or with
--server straight to the server's API. The server records it once the registry holds the digest, read
with the build's own login connection for that registry. The standard library only, and requests for
--server: no Django, no server settings.
"""

import json
import os
import socket
import sys

from .client import AGENT_SOCKET_VARIABLE, BUILD_TOKEN_VARIABLE, UsageError, agent_dir, options_parse

USAGE = "usage: manage.py report_push REFERENCE [--digest DIGEST] [--server URL [--ca-file FILE]]"
HELP = f"""{USAGE}

Record a push the build's Docker daemon did not see (buildx --push with a container driver, kaniko, buildah,
podman push) as a push of the running build, once the registry holds it. Run it inside the build's command:
it reads the build's token from {BUILD_TOKEN_VARIABLE}.

  REFERENCE        the image pushed: [registry/]repository:tag (or @digest)
  --digest DIGEST  the digest pushed (sha256:...); without it, the registry's for the tag is recorded
  --server URL     send it to the dockersupport server's API instead of through this host's agent
  --ca-file FILE   CA certificates that verify the server (with --server)
"""
REFUSED_EXIT_CODE = 1
USAGE_EXIT_CODE = 2
TIMEOUT = 90  # seconds: the server reads the registry before it answers


def parse(argv: list[str]) -> dict:
    if "-h" in argv or "--help" in argv:
        raise SystemExit(HELP)
    options = options_parse(
        argv, {"reference": None, "digest": "", "server": "", "ca_file": os.environ.get("DOCKERSUPPORT_SERVER_CA", "")},
        {"--digest": "digest", "--server": "server", "--ca-file": "ca_file"}, "reference", "one REFERENCE a report")
    if not options["reference"]:
        raise UsageError("no REFERENCE given")
    return options


class Refused(Exception):
    """The report was not recorded; the message says why (the server's or the agent's words)."""


def main(argv: list[str], out=None, err=None, environ=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        options = parse(argv)
    except UsageError as exc:
        err.write(f"{USAGE}\nmanage.py report_push: error: {exc}\n")
        return USAGE_EXIT_CODE
    token = environ.get(BUILD_TOKEN_VARIABLE, "")
    if not token:
        err.write(f"dockersupport: report_push runs inside a build: {BUILD_TOKEN_VARIABLE} is not set (run_build sets "
                  "it for its command; for an API-driven build, export the `build_token` its start answered)\n")
        return REFUSED_EXIT_CODE
    report = {"token": token, "reference": options["reference"], "digest": options["digest"]}
    try:
        if options["server"]:
            recorded = via_server(options["server"], options["ca_file"], report)
        else:
            recorded = via_agent(environ.get(AGENT_SOCKET_VARIABLE) or os.path.join(agent_dir(), "agent.sock"), report)
    except Refused as exc:
        err.write(f"dockersupport: the push of {options['reference']} was not recorded: {_without(str(exc), token)}\n")
        return REFUSED_EXIT_CODE
    out.write(summary(recorded))
    out.flush()
    return 0


def summary(recorded: dict) -> str:
    reference = f"{recorded.get('registry')}/{recorded.get('repository')}"
    if recorded.get("tag"):
        reference += f":{recorded['tag']}"
    again = " (it was recorded already)" if recorded.get("recorded_before") else ""
    return (f"dockersupport: recorded the push of {reference} ({recorded.get('digest')}) for build "
            f"{recorded.get('build_label')}{again}: the registry holds it (read with connection "
            f"{recorded.get('connection')})\n")


def via_agent(path: str, report: dict) -> dict:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT + 30)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise Refused(f"no agent answers at {path} ({exc.strerror or exc}); run report_push inside run_build's "
                          f"command, set {AGENT_SOCKET_VARIABLE}, or give --server URL") from None
        sock.sendall(json.dumps({"op": "report_push", **report}).encode() + b"\n")
        line = sock.makefile("rb").readline()
    except OSError as exc:
        raise Refused(f"the agent at {path} did not answer: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(line)
    except ValueError:
        raise Refused(f"the agent at {path} went away without an answer") from None
    if not isinstance(answer, dict) or answer.get("op") != "reported":
        raise Refused(str(answer.get("message") if isinstance(answer, dict) else answer))
    return answer


def via_server(url: str, ca_file: str, report: dict) -> dict:
    import requests

    from .server_api import BearerToken

    if not url.startswith("https://") and not _loopback(url):
        raise Refused(f"--server {url}: give an https:// URL; the build token is not sent in clear text")
    try:
        # auth=, not a header: requests would put a ~/.netrc password for the host in its place
        response = requests.post(url.rstrip("/") + "/api/v1/builds/pushes/", timeout=(10, TIMEOUT),
                                 json={"reference": report["reference"], "digest": report["digest"]},
                                 auth=BearerToken(report["token"]),
                                 headers={"User-Agent": "dockersupport-report"}, verify=ca_file or True,
                                 allow_redirects=False)
    except requests.exceptions.RequestException as exc:
        raise Refused(f"the server at {url} cannot be reached: {type(exc).__name__}") from None
    if response.is_redirect:
        raise Refused(f"the server redirects to {response.headers.get('Location', '?')}: give --server the URL it "
                      "redirects to")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 300 or not isinstance(body, dict):
        raise Refused(f"HTTP {response.status_code}: {_detail(body)}")
    return body


def _loopback(url: str) -> bool:
    """An http:// URL of this host (a server on the build host itself, tests)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") in ("127.0.0.1", "::1", "localhost")


def _detail(body) -> str:
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    if isinstance(body, dict):
        return "; ".join(f"{key}: {' '.join(map(str, value)) if isinstance(value, list) else value}"
                         for key, value in body.items())
    return "no answer the client understands"


def _without(text: str, token: str) -> str:
    """Nobody quotes the token back; should anything, it is never printed."""
    return text.replace(token, "[build token]") if token else text
