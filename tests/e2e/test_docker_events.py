"""Docker operations of a build, recorded from the daemon's event stream, on real daemons and a registry."""

import subprocess
import sys
import threading
import time

import pytest
import requests

from builds.models import Build, DockerOperation, PushedImage
from tests.e2e.conftest import ROOT, command_env
from tests.factories import api_token_for
from tests.harness import DockerDaemon

pytestmark = [pytest.mark.e2e]

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
])


def registry_digest(registry, repository, tag):
    response = requests.head(f"{registry.url}/v2/{repository}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES},
                             auth=(registry.username, registry.password), timeout=10)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]


def actions(build):
    return list(build.operations.order_by("time_nano").values_list("action", flat=True))


def test_a_build_that_pulls_tags_pushes_and_runs_a_failing_container(manage, agent, registry_configuration,
                                                                      private_image, registry, busybox_image):
    pushed = f"{registry.address}/team/events:7"
    script = (f"docker pull {private_image} && docker tag {private_image} {pushed} && docker push {pushed} && "
              f"docker run --network none --name failing-{agent.name} {busybox_image} sh -c 'exit 3'; "
              f"docker rm failing-{agent.name} >/dev/null; true")
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    recorded = actions(build)
    for action in ("pull", "tag", "push", "create", "start", "die", "destroy"):
        assert action in recorded, (action, recorded)
    assert recorded.index("pull") < recorded.index("tag") < recorded.index("push") < recorded.index("start")
    die = build.operations.get(action="die")
    assert (die.exit_code, die.container_name) == (3, f"failing-{agent.name}")
    assert die.time_nano > 1_700_000_000_000_000_000 and die.attributes["exitCode"] == "3"
    image = PushedImage.objects.get(build=build)
    assert (image.registry, image.repository, image.tag) == (registry.address, "team/events", "7")
    assert image.digest == registry_digest(registry, "team/events", "7")
    assert build.operations.get(action="push").digest == image.digest
    # What the daemon knows of the pulled image: the registry's digest and its ID.
    pull = build.operations.get(action="pull")
    repository, tag = private_image.split("/", 1)[1].rsplit(":", 1)
    assert pull.digest == registry_digest(registry, repository, tag)
    assert pull.attributes["image_id"].startswith("sha256:") and len(pull.attributes["image_id"]) == 71
    assert "container failing-" in result.stdout and "exited 3  FAILED" in result.stdout  # run_build's summary


def test_events_of_another_agents_daemon_are_not_attributed(manage, agent, registry_configuration, start_service,
                                                             busybox_image, docker_client):
    other = start_service(DockerDaemon())
    other_client = other.client()
    from tests.harness import import_busybox_image

    import_busybox_image(other_client)
    stop = threading.Event()

    def busy_other_daemon():
        while not stop.is_set():
            other_client.images.get(busybox_image).tag("elsewhere/noise", str(time.monotonic_ns()))

    noise = threading.Thread(target=busy_other_daemon)
    noise.start()
    try:
        result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--",
                        "docker", "tag", busybox_image, "here/mine:1")
    finally:
        stop.set()
        noise.join()
        other_client.close()
    assert result.returncode == 0, result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    images = set(build.operations.values_list("image", flat=True))
    assert "here/mine" in images and "elsewhere/noise" not in images


def test_a_daemon_restart_in_the_middle_of_a_build_loses_and_doubles_nothing(agent, registry_configuration,
                                                                              docker_daemon, busybox_image,
                                                                              home, tmp_path):
    half, resumed = tmp_path / "half", tmp_path / "resumed"
    script = (f"docker tag {busybox_image} restart/before:1 && docker tag {busybox_image} restart/before:2 && "
              f"touch {half} && while [ ! -e {resumed} ]; do sleep 0.1; done && "
              f"docker tag {busybox_image} restart/after:1 && docker tag {busybox_image} restart/after:2")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", registry_configuration.ident, "--agent", agent.name, "--",
         "sh", "-c", script], cwd=ROOT, env=command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not half.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        docker_daemon.restart()
        resumed.touch()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    build = Build.objects.get(configuration=registry_configuration)
    tags = list(build.operations.filter(action="tag").order_by("time_nano").values_list("image", "tag"))
    assert tags == [("restart/before", "1"), ("restart/before", "2"), ("restart/after", "1"), ("restart/after", "2")]


def test_the_agent_records_the_operations_of_api_driven_builds(agent, registry_configuration, busybox_image,
                                                                docker_client, admin_user, client):
    """No run_build here: the CI talks to the build's own endpoint (`docker_host` of the API's answer)."""
    import json

    import docker

    headers = {"HTTP_AUTHORIZATION": f"Token {api_token_for(admin_user)}"}
    docker_client.images.get(busybox_image).tag("watched/outside", "0")  # no build runs: not recorded
    started = client.post("/api/v1/builds/", json.dumps({"configuration": registry_configuration.ident,
                                                         "agent": agent.name}), content_type="application/json",
                          **headers)
    assert started.status_code == 201, started.content
    endpoint = docker.DockerClient(base_url=started.json()["docker_host"])
    endpoint.images.get(busybox_image).tag("watched/inside", "1")
    endpoint.close()
    finished = client.post(f"/api/v1/builds/{started.json()['id']}/finish/", json.dumps({"exit_code": 0}),
                           content_type="application/json", **headers)
    assert finished.status_code == 200, finished.content
    build = Build.objects.get(pk=started.json()["id"])
    assert list(build.operations.filter(action="tag").values_list("image", flat=True)) == ["watched/inside"]
    assert not DockerOperation.objects.filter(image="watched/outside").exists()


def test_the_api_and_the_docker_info_tab_show_the_same(manage, agent, registry_configuration, private_image,
                                                       registry, busybox_image, admin_client, admin_user):
    from django.urls import reverse
    pushed = f"{registry.address}/team/same:1"
    script = (f"docker pull {private_image} && docker tag {private_image} {pushed} && docker push {pushed} && "
              f"docker run --rm --network none {busybox_image} sh -c 'exit 3'; true")
    assert manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                  script).returncode == 0
    build = Build.objects.get(configuration=registry_configuration)
    token = api_token_for(admin_user)
    info = admin_client.get(f"/api/v1/builds/{build.pk}/docker-info/", HTTP_AUTHORIZATION=f"Token {token}").json()
    summary = info["summary"]
    assert summary["operation_count"] == len(info["operations"]) == build.operations.count()
    assert {"time", "action", "image", "tag", "digest", "container", "exit_code"} <= set(info["operations"][0])
    assert [c["exit_code"] for c in summary["containers"]] == [3] and summary["containers_failed"] == 1
    [image] = info["pushed_images"]
    assert {k: image[k] for k in ("registry", "repository", "tag", "cleanup_status")} == {
        "registry": registry.address, "repository": "team/same", "tag": "1", "cleanup_status": "kept"}
    assert image["digest"].startswith("sha256:")
    assert summary["warnings"] == []  # the only pull came from the registry the build logged in to

    page = admin_client.get(reverse("admin:builds_build_docker_info", args=[build.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-copy="{registry.address}/team/same@{image["digest"]}"' in html
    assert f"{summary['operation_count']}</span> operations" in html
    assert "3 — failed" in html
    filtered = admin_client.get(reverse("admin:builds_build_docker_info", args=[build.pk]), {"action": "push"})
    assert filtered.context["page"].paginator.count == len([o for o in info["operations"] if o["action"] == "push"])
    searched = admin_client.get(reverse("admin:builds_build_docker_info", args=[build.pk]), {"q": "team/same"})
    assert all("team/same" in o.image for o in searched.context["page"].object_list)
    change = admin_client.get(reverse("admin:builds_build_change", args=[build.pk])).content.decode()
    assert reverse("admin:builds_build_docker_info", args=[build.pk]) in change  # the tab beside the build's fields


def test_a_docker_build_is_recorded_as_a_build(manage, agent, registry_configuration, busybox_image, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo built > /built.txt\n")
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                    f"docker build --network none -t built/app:1 {context} && docker tag {busybox_image} plain/tag:1",
                    DOCKER_BUILDKIT="0")
    assert result.returncode == 0, result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    assert list(build.operations.filter(action="build").values_list("image", "tag")) == [("built/app", "1")]
    # Tagging an image that existed before the build is a tag, not a build.
    assert build.operations.filter(action="tag", image="plain/tag").exists()
    assert "built: built/app:1" in result.stdout
