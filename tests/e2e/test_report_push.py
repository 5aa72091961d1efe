"""report_push end to end: a build's command pushes straight through the registry's HTTP API (as kaniko, buildah or
buildx with a container driver do: the daemon sees nothing), reports it with `python manage.py report_push`, through
its agent or the server's API; Docker Info lists it, clean-up deletes it with its build; and the refusals.

The real dockerd, registry, server and agent processes of the harness.
"""

import json
import sys
import uuid

import pytest
import requests

from builds.cleanup.registry import pushed_images_settle_owner
from builds.models import Build, DockerOperation, PushedImage
from tests.e2e.test_server_cleanup import manifest_status
from tests.factories import api_token_for
from tests.harness.http_push import push_image

pytestmark = [pytest.mark.e2e]

PY = sys.executable
ZERO_DIGEST = "sha256:" + "0" * 64


def secrets_absent(token: str, *texts) -> None:
    for text in texts:
        assert token not in text


def test_a_build_reports_pushes_its_daemon_never_saw_and_clean_up_deletes_them(
        manage, agent, server, registry_configuration, registry, tmp_path, admin_user):
    registry_configuration.keep_last = 1
    registry_configuration.cleanup_pushed_images = True
    registry_configuration.save()
    repository = f"reported/{uuid.uuid4().hex[:8]}"
    image = f"{registry.address}/{repository}"
    token_file = tmp_path / "token"
    script = f"""set -e
{PY} -m tests.harness.http_push {image}:1 > {tmp_path}/digest-1
{PY} manage.py report_push {image}:1
{PY} -m tests.harness.http_push {image}:2 > {tmp_path}/digest-2
{PY} manage.py report_push {image}:2 --digest "$(cat {tmp_path}/digest-2)" --server {server.url}
if {PY} manage.py report_push elsewhere.example.test:5000/{repository}:1; then exit 71; fi
if {PY} manage.py report_push {image}@{ZERO_DIGEST}; then exit 72; fi
if {PY} manage.py report_push {image}:1 --digest {ZERO_DIGEST} --server {server.url}; then exit 73; fi
printf %s "$DOCKERSUPPORT_BUILD_TOKEN" > {token_file}
if grep -rqsF --exclude=*.sock "$DOCKERSUPPORT_BUILD_TOKEN" {agent.dir}; then exit 75; fi
"""
    result = manage("run_build", registry_configuration.ident, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr  # 75: the token is in a file of the agent's
    digests = {tag: (tmp_path / f"digest-{tag}").read_text().strip() for tag in ("1", "2")}
    token = token_file.read_text()
    assert token.startswith("dsr_")
    output = result.stdout + result.stderr
    assert f"dockersupport: recorded the push of {image}:1 ({digests['1']}) for build" in result.stdout
    assert f"dockersupport: recorded the push of {image}:2 ({digests['2']}) for build" in result.stdout
    assert f"dockersupport:   pushed: {image}:1, {image}:2" in result.stdout  # run_build's summary counts them
    assert "has no login connection for elsewhere.example.test:5000" in result.stderr
    assert f"has no {ZERO_DIGEST} in repository {repository}" in result.stderr
    assert f"holds {digests['1']} for tag '1' of {repository}, not {ZERO_DIGEST}" in result.stderr

    build = Build.objects.get(configuration=registry_configuration)
    images = {i.tag: i for i in PushedImage.objects.filter(build=build)}
    # The registry (the distribution API) keeps no push times: the digests might have been there before the build
    assert {tag: (i.digest, i.reported, i.owner_uncertain) for tag, i in images.items()} == {
        "1": (digests["1"], True, True), "2": (digests["2"], True, True)}
    assert all(i.verified_at and build.started_at <= i.verified_at <= build.finished_at for i in images.values())
    assert DockerOperation.objects.filter(build=build, action="push", reported=True).count() == 2

    # Docker Info, over HTTP, lists them like any other push, marked reported.
    info = requests.get(f"{server.url}/api/v1/builds/{build.pk}/docker-info/", timeout=30,
                        headers={"Authorization": f"Token {api_token_for(admin_user)}"})
    assert info.status_code == 200
    assert info.json()["summary"]["images_pushed"] == [f"{image}:1", f"{image}:2"]
    assert [i["reported"] for i in info.json()["pushed_images"]] == [True, True]

    # The token ends with its build, through the agent and through the API.
    for extra in ((), ("--server", server.url)):
        late = manage("report_push", f"{image}:1", *extra, DOCKERSUPPORT_BUILD_TOKEN=token,
                      DOCKERSUPPORT_AGENT_SOCKET=str(agent.dir / "agent.sock"))
        assert late.returncode == 1 and "this build token is not valid: its build has finished" in late.stderr
        secrets_absent(token, late.stdout, late.stderr)

    # The next build reports the first one's image: somebody else's, pushed before it started.
    second = manage("run_build", registry_configuration.ident, "--", "sh", "-c",
                    f"if {PY} manage.py report_push {image}:1; then exit 74; fi")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{image}@{digests['1']} was pushed before build {registry_configuration.ident} #2 started" in (
        second.stderr)
    assert not PushedImage.objects.filter(build__number=2).exists()

    cleanup = manage("cleanup_builds")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert not Build.objects.filter(pk=build.pk).exists()
    assert {i.tag: i.cleanup_status for i in PushedImage.objects.filter(build__isnull=True)} == {
        "1": "kept", "2": "kept"}  # until an admin of the project settles their owner
    assert manifest_status(registry, repository, digests["1"]) == 200
    assert pushed_images_settle_owner(PushedImage.objects.filter(build__isnull=True), user=admin_user) == 2
    cleanup = manage("cleanup_builds")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert {i.tag: i.cleanup_status for i in PushedImage.objects.filter(build__isnull=True)} == {
        "1": "deleted", "2": "deleted"}
    assert manifest_status(registry, repository, digests["1"]) == 404
    assert manifest_status(registry, repository, digests["2"]) == 404

    secrets_absent(token, output, second.stdout, second.stderr, cleanup.stdout, cleanup.stderr, agent.process.log(),
                   open(server.log_path, errors="replace").read(), info.text,
                   json.dumps(list(PushedImage.objects.values()), default=str),
                   json.dumps(list(DockerOperation.objects.values()), default=str))


def test_an_api_driven_build_reports_with_the_token_its_start_answered(manage, agent, server, registry_configuration,
                                                                       registry, admin_user):
    headers = {"Authorization": f"Token {api_token_for(admin_user)}"}
    started = requests.post(f"{server.url}/api/v1/builds/", json={"configuration": registry_configuration.ident,
                                                                  "agent": agent.name}, headers=headers, timeout=60)
    assert started.status_code == 201, started.text
    token = started.json()["build_token"]
    repository = f"reported-api/{uuid.uuid4().hex[:8]}"
    digest = push_image(registry.url, repository, "1", auth=(registry.username, registry.password))
    reference = f"{registry.address}/{repository}:1"
    # Straight to the API, and through the host's agent: one push, recorded once.
    direct = manage("report_push", reference, "--server", server.url, DOCKERSUPPORT_BUILD_TOKEN=token)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    relayed = manage("report_push", reference, "--digest", digest, DOCKERSUPPORT_BUILD_TOKEN=token)
    assert relayed.returncode == 0, relayed.stdout + relayed.stderr
    assert "(it was recorded already)" in relayed.stdout
    build = Build.objects.get(pk=started.json()["id"])
    assert list(PushedImage.objects.filter(build=build).values_list("digest", "reported")) == [(digest, True)]

    finished = requests.post(f"{server.url}/api/v1/builds/{build.pk}/finish/", json={"exit_code": 0},
                             headers=headers, timeout=60)
    assert finished.status_code == 200, finished.text
    late = manage("report_push", reference, DOCKERSUPPORT_BUILD_TOKEN=token)
    assert late.returncode == 1 and "its build has finished" in late.stderr
    listed = requests.get(f"{server.url}/api/v1/builds/{build.pk}/", headers=headers, timeout=30)
    secrets_absent(token, direct.stdout + direct.stderr, relayed.stdout + relayed.stderr, late.stderr, finished.text,
                   listed.text, agent.process.log(), open(server.log_path, errors="replace").read())


def test_report_push_outside_any_build_and_without_its_agent(manage, agent, registry):
    outside = manage("report_push", f"{registry.address}/app:1")
    assert outside.returncode == 1 and "DOCKERSUPPORT_BUILD_TOKEN is not set" in outside.stderr
    wrong = manage("report_push", f"{registry.address}/app:1", DOCKERSUPPORT_BUILD_TOKEN="dsr_not-a-real-token-99")
    assert wrong.returncode == 1 and "this build token is not valid" in wrong.stderr
    assert "dsr_not-a-real-token-99" not in wrong.stdout + wrong.stderr
