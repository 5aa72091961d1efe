"""The agent as a resident process: what happens when run_build, the agent, the server or the
daemon goes away in the middle of a build, when its token is revoked, and what the build's
config keeps of the host's own Docker config. Real server, agent, daemon and registry processes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builds.models import Build
from tests.e2e.conftest import ROOT, command_env

pytestmark = [pytest.mark.e2e]


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_build_process(agent, home, configuration, script, **env):
    return subprocess.Popen([sys.executable, "manage.py", "run_build", configuration.ident, "--", "sh", "-c", script],
                            cwd=ROOT, env=command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def configs(agent):
    root = agent.dir / "configs"
    return list(root.iterdir()) if root.exists() else []


def test_a_killed_run_build_has_its_config_erased_and_its_build_lost_within_seconds(agent, registry_configuration,
                                                                                      home):
    process = run_build_process(agent, home, registry_configuration, "echo started; sleep 300")
    try:
        assert process.stdout.readline().startswith("dockersupport: build")
        wait_for(lambda: configs(agent), "the build's config")
        os.killpg(process.pid, signal.SIGKILL)  # run_build and its command, with no chance to clean up
        process.wait()
        wait_for(lambda: not configs(agent), "the agent to erase the config", timeout=30)
        build = Build.objects.get(configuration=registry_configuration)
        wait_for(lambda: Build.objects.get(pk=build.pk).status == Build.Status.LOST, "the build to be lost")
        build.refresh_from_db()
        assert "run_build ended without finishing" in build.error and build.docker_config == ""
    finally:
        process.kill()


@pytest.mark.parametrize("answer", ["heard", "lost"])
def test_an_agent_restart_does_not_end_a_running_build(agent, registry_configuration, home, busybox_image, tmp_path,
                                                       answer):
    half, resume = tmp_path / "half", tmp_path / "resume"
    acked = agent.dir / "spool" / "acked"
    script = (f"docker tag {busybox_image} restart/agent-before:1 && touch {half} && "
              f"while [ ! -e {resume} ]; do sleep 0.1; done && docker tag {busybox_image} restart/agent-after:1 && "
              f"docker pull {busybox_image} >/dev/null; cat \"$DOCKER_CONFIG/config.json\" >/dev/null")
    process = run_build_process(agent, home, registry_configuration, script)
    try:
        wait_for(half.exists, "the first half of the build")
        wait_for(acked.exists, "the server to take the first half's operation")
        agent.process.stop(keep_data=True)  # SIGTERM
        if answer == "lost":
            acked.unlink()  # the agent stopped before the server's answer reached it
        agent.process.start()  # on the same folder
        resume.touch()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    build = Build.objects.get(configuration=registry_configuration)
    assert build.status == Build.Status.SUCCEEDED
    tags = list(build.operations.filter(action="tag").order_by("time_nano").values_list("image", flat=True))
    assert tags == ["restart/agent-before", "restart/agent-after"]  # every operation once
    assert not configs(agent)


def test_a_new_agent_erases_the_config_of_a_build_whose_run_build_died_meanwhile(agent, registry_configuration,
                                                                                   home):
    process = run_build_process(agent, home, registry_configuration, "sleep 300")
    try:
        wait_for(lambda: configs(agent), "the build's config")
        agent.process.stop(keep_data=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert configs(agent)  # nobody erased it yet
        agent.process.start()
        wait_for(lambda: not configs(agent), "the new agent to erase the config")
        wait_for(lambda: Build.objects.get(configuration=registry_configuration).status == Build.Status.LOST,
                 "the build to be lost")
    finally:
        process.kill()


def test_a_server_restart_during_a_build_loses_and_doubles_nothing(agent, server, registry_configuration, home,
                                                                    busybox_image, tmp_path):
    half, resume = tmp_path / "half", tmp_path / "resume"
    script = (f"docker tag {busybox_image} outage/before:1 && touch {half} && "
              f"while [ ! -e {resume} ]; do sleep 0.1; done && docker tag {busybox_image} outage/during:1")
    process = run_build_process(agent, home, registry_configuration, script)
    try:
        wait_for(half.exists, "the first half of the build")
        server.stop(keep_data=True)
        resume.touch()
        time.sleep(3)  # events of the build happen while the server is away: the agent spools them
        server.start()
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    build = Build.objects.get(configuration=registry_configuration)
    assert build.status == Build.Status.SUCCEEDED
    tags = list(build.operations.filter(action="tag").order_by("time_nano").values_list("image", flat=True))
    assert tags == ["outage/before", "outage/during"]
    assert "dockersupport: Docker operations: 2" in out


def test_a_revoked_token_stops_the_agent_and_leaves_no_credentials(agent, registry_configuration, home):
    from builds.agents.services import agent_token_revoke

    process = run_build_process(agent, home, registry_configuration, "sleep 300")
    try:
        wait_for(lambda: configs(agent), "the build's config")
        agent_token_revoke(agent=agent.model)
        wait_for(lambda: agent.process.process.poll() is not None, "the agent to stop", timeout=60)
        assert agent.process.process.returncode == 2
        assert "revoked or replaced" in agent.process.log()
        assert not configs(agent)  # no agent of that token will adopt the build: its credentials are gone
    finally:
        os.killpg(process.pid, signal.SIGKILL)


def test_a_build_of_a_project_the_agent_does_not_serve_is_refused(manage, start_agent, registry_configuration,
                                                                   tmp_path):
    from tests.factories import ProjectFactory

    agent = start_agent(projects=[ProjectFactory(ident="elsewhere")])
    result = manage("run_build", registry_configuration.ident, "--", "touch", str(tmp_path / "ran"),
                    DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert result.returncode == 1
    assert f"agent {agent.name} does not run builds of project '{registry_configuration.project.ident}'" \
        in result.stderr
    assert not (tmp_path / "ran").exists() and not Build.objects.exists()


def test_a_daemon_that_does_not_answer_is_one_clear_line_and_a_build_that_did_not_run(manage, start_agent, tmp_path,
                                                                                       registry_configuration):
    agent = start_agent(docker_host=f"unix://{tmp_path}/no-daemon.sock")
    result = manage("run_build", registry_configuration.ident, "--", "touch", str(tmp_path / "ran"),
                    DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + agent.process.log()
    [line, not_run] = result.stderr.splitlines()
    assert line.startswith("dockersupport: the Docker daemon at unix://") and "does not answer" in line
    assert not_run == "dockersupport: the command was not run."
    build = Build.objects.get()
    assert build.status == Build.Status.ERROR and "does not answer" in build.error


def test_no_agent_is_one_clear_line(manage, registry_configuration, tmp_path):
    result = manage("run_build", registry_configuration.ident, "--", "true", DOCKERSUPPORT_AGENT_DIR=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"dockersupport: no agent answers at {tmp_path}/agent.sock")


def test_the_builds_config_keeps_the_hosts_settings_but_not_its_credentials(start_agent, registry_configuration, home,
                                                                           tmp_path, registry):
    host_config = tmp_path / "host-docker"
    host_config.mkdir()
    (host_config / "config.json").write_text(json.dumps({
        "proxies": {"default": {"httpProxy": "http://proxy.example.test:3128"}},
        "auths": {"other.example.test": {"auth": "aG9zdDpzZWNyZXQ="}}, "credsStore": "desktop",
        "credHelpers": {"x.example.test": "helper"}, "detachKeys": "ctrl-x,x",
    }))
    agent = start_agent(DOCKER_CONFIG=str(host_config))
    process = run_build_process(agent, home, registry_configuration, 'cat "$DOCKER_CONFIG/config.json"; echo')
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    config = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert config["proxies"] == {"default": {"httpProxy": "http://proxy.example.test:3128"}}
    assert config["detachKeys"] == "ctrl-x,x"
    assert list(config["auths"]) == [registry.address]
    assert "credsStore" not in config and "credHelpers" not in config


def test_an_expiring_ecr_token_is_replaced_in_a_running_builds_config(agent, moto_server, start_service, home,
                                                                      transactional_db, settings):
    """moto's tokens expire in 2015, so the agent renews them at each heartbeat (1 s here)."""
    from tests.factories import BuildConfigurationFactory, EcrConnectionFactory, LoginConnectionFactory
    from tests.harness import Registry

    ecr_registry = start_service(Registry(username="AWS", password="123456789012-auth-token"))
    configuration = BuildConfigurationFactory()
    connection = EcrConnectionFactory(project=configuration.project, registry=ecr_registry.address,
                                      endpoint_url=moto_server.endpoint_url)
    LoginConnectionFactory(configuration=configuration, connection=connection)
    script = 'ls -i "$DOCKER_CONFIG/config.json"; sleep 6; ls -i "$DOCKER_CONFIG/config.json"'
    process = run_build_process(agent, home, configuration, script)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, out + err
    inodes = [line.split()[0] for line in out.splitlines() if line.endswith("config.json")]
    assert len(inodes) == 2 and inodes[0] != inodes[1]  # rewritten (atomically) while the command ran


def test_an_agent_verifies_a_server_with_a_private_certificate_through_its_ca_file(
        tmp_path, docker_daemon, registry_configuration, home):
    from builds.agents.services import agent_token_issue
    from tests.conftest import start
    from tests.e2e.conftest import database_url
    from tests.harness import AgentProcess, ServerProcess, ServiceError
    from tests.harness.dockersupport import private_ca

    certificate, key, ca = private_ca(str(tmp_path))
    server = start(ServerProcess(database_url(), tls=(certificate, key, ca), ALLOWED_HOSTS="localhost"))
    try:
        assert server.url.startswith("https://localhost:")
        _, token, _ = agent_token_issue(name="tls-agent")
        refusing = AgentProcess(server.url, token, docker_daemon.host)
        refusing.start_timeout = 8
        with pytest.raises(ServiceError) as failed:  # the system's CAs do not know ours: it never connects
            refusing.start()
        assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
        agent = start(AgentProcess(server.url, token, docker_daemon.host, DOCKERSUPPORT_SERVER_CA=ca))
        try:
            process = run_build_process(type("A", (), {"dir": Path(agent.directory)})(), home, registry_configuration,
                                        "true")
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, out + err
            assert Build.objects.get(configuration=registry_configuration).status == Build.Status.SUCCEEDED
        finally:
            agent.stop()
    finally:
        server.stop()


def test_a_build_started_while_the_server_restarts_waits_for_it(agent, server, registry_configuration, home):
    server.stop(keep_data=True)
    process = run_build_process(agent, home, registry_configuration, "true")
    try:
        time.sleep(2)  # run_build asked; the agent's start cannot reach the server
        server.start()
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    assert "cannot be reached" in out  # what run_build said while it waited
    assert Build.objects.get(configuration=registry_configuration).status == Build.Status.SUCCEEDED


def test_an_agent_installed_from_its_own_lock_file_alone_runs_a_build(server, docker_daemon, registry_configuration,
                                                                      home, tmp_path):
    """A build host needs requirements-agent.txt only: docker, requests and theirs; nothing of Django."""
    from builds.agents.services import agent_token_issue
    from tests.conftest import start
    from tests.harness import AgentProcess

    venv = tmp_path / "agent-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                                "--require-hashes", "--no-deps", "-r", str(ROOT / "requirements-agent.txt")],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    packages = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True,
                              check=True).stdout.lower()
    assert "docker==" in packages and "django" not in packages

    class LockedAgent(AgentProcess):
        def _command(self):
            return [str(venv / "bin" / "python"), *super()._command()[1:]]

    _, token, _ = agent_token_issue(name="locked-agent")
    agent = start(LockedAgent(server.url, token, docker_daemon.host))
    try:
        process = run_build_process(type("A", (), {"dir": Path(agent.directory)})(), home, registry_configuration,
                                    "docker version >/dev/null")
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
    finally:
        agent.stop()


def test_an_agent_pointed_at_a_redirecting_url_says_which_url_to_use(tmp_path, docker_daemon, transactional_db):
    from builds.agents.services import agent_token_issue
    from tests.harness import AgentProcess, ServiceError
    from tests.harness.stand_in import Answer, StandIn

    _, token, _ = agent_token_issue(name="redirected")
    with StandIn("127.0.0.2", lambda r: Answer(301, {"Location": "https://ci.example.test/api/v1/agent/connect/"})) \
            as plain_http:
        agent = AgentProcess(plain_http.url, token, docker_daemon.host)
        agent.start_timeout = 20
        with pytest.raises(ServiceError) as failed:
            agent.start()
    assert "the server redirects to https://ci.example.test/" in str(failed.value)
    assert "Traceback" not in str(failed.value)
