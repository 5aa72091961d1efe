"""Ingestion of a real daemon's events (issue 14): an exec's whole command line stored cut and without the
build's secrets, and a push seen while two builds ran by time (without their own Docker endpoint) on the
daemon recorded on both with its owner uncertain (tests/e2e/test_exact_attribution.py: with their endpoints).
Real server, agent, daemon and registry processes."""

import json
import subprocess
import sys
import time

import pytest

from builds.models import Build, PushedImage, SetAsideRecord
from builds.operations.records import RAW_ACTION_ATTRIBUTE
from tests.e2e.conftest import ROOT, command_env
from tests.factories import BuildConfigurationFactory, LoginConnectionFactory

pytestmark = [pytest.mark.e2e]


def test_a_10_kb_exec_command_holding_the_builds_password_is_stored_cut_without_it(manage, agent,
                                                                                  registry_configuration, registry,
                                                                                  busybox_image):
    container = f"exec-{agent.name}"
    # Docker names the whole command line in the event's action: `exec_start: sh -c <the script>`.
    long = "x" * 10_000
    script = (f"docker run -d --network none --name {container} {busybox_image} sleep 60 >/dev/null && "
              f"docker exec {container} sh -c 'true --password {registry.password} {long} {registry.password}' && "
              f"docker rm -f {container} >/dev/null")
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    exec_start = build.operations.get(action="exec", raw_action__startswith="exec_start")
    kept = exec_start.attributes[RAW_ACTION_ATTRIBUTE]
    assert kept.startswith("exec_start: sh -c true --password *** xxx") and len(kept) == 1_000
    assert len(exec_start.raw_action) == 100
    for operation in build.operations.all():
        assert registry.password not in json.dumps([operation.raw_action, operation.attributes])
    assert {"create", "start", "exec", "die", "destroy"} <= set(build.operations.values_list("action", flat=True))
    assert not SetAsideRecord.objects.exists()


def test_a_push_while_two_builds_ran_by_time_on_the_daemon_is_recorded_on_both_owner_uncertain(
        manage, agent, home, registry_configuration, registry, busybox_image, tmp_path):
    # Builds without their own Docker endpoint (exact attribution turned off) are attributed by time.
    registry_configuration.exact_attribution = False
    registry_configuration.save()
    other = BuildConfigurationFactory(project=registry_configuration.project, exact_attribution=False)
    login = LoginConnectionFactory(configuration=other, connection=registry_configuration.logins.get().connection)
    started, pushed = tmp_path / "started", tmp_path / "pushed"
    waiting = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", other.ident, "--", "sh", "-c",
         f"touch {started}; while [ ! -e {pushed} ]; do sleep 0.1; done"],
        cwd=ROOT, env=command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()
            time.sleep(0.05)
        image = f"{registry.address}/team/shared:1"
        result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                        f"docker tag {busybox_image} {image} && docker push {image} >/dev/null && touch {pushed}")
        assert result.returncode == 0, result.stdout + result.stderr
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, out + err
    finally:
        waiting.kill()
    pusher, bystander = (Build.objects.get(configuration=c) for c in (registry_configuration, other))
    images = {image.build_id: image for image in PushedImage.objects.filter(repository="team/shared")}
    assert set(images) == {pusher.pk, bystander.pk}
    for build, image in ((pusher, images[pusher.pk]), (bystander, images[bystander.pk])):
        assert image.owner_uncertain and image.digest.startswith("sha256:")
        assert image.owner_note == f"pushed while builds {bystander} and {pusher} ran on the same daemon"
        assert image.connection_id == login.connection_id  # the login of each build's configuration
