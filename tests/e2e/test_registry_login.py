"""Registry login before a build and logout after it, through run_build, on a real daemon and registry."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from builds.models import Build
from tests.e2e.conftest import ROOT, command_env
from tests.harness import Registry

pytestmark = [pytest.mark.e2e]


def files_below(path):
    return [p for p in path.rglob("*")] if path.exists() else []


def test_a_private_image_pulls_only_inside_a_build_with_login(manage, agent, registry_configuration, private_image,
                                                               registry, config_root, home):
    outside = subprocess.run(["docker", "pull", private_image], capture_output=True, text=True,
                             env={**os.environ, "DOCKER_HOST": agent.docker_host, "HOME": str(home)})
    assert outside.returncode != 0
    assert "no basic auth credentials" in outside.stderr or "unauthorized" in outside.stderr.lower()

    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--",
                    "sh", "-c", f'test -n "$DOCKER_CONFIG" && docker pull {private_image}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"logged in with {registry_configuration.project.ident}/" in result.stdout
    build = Build.objects.get(configuration=registry_configuration)
    assert (build.status, build.exit_code, build.docker_config) == (Build.Status.SUCCEEDED, 0, "")
    assert registry.password not in result.stdout + result.stderr
    # Nothing is left on disk: no build config, and the user's own Docker config was never written.
    assert files_below(config_root) == []
    assert not (home / ".docker").exists()


def test_the_command_sees_a_private_config_with_0700_and_0600(manage, agent, registry_configuration, registry):
    script = ('stat -c "%a" "$DOCKER_CONFIG" "$DOCKER_CONFIG/config.json"; '
              'cat "$DOCKER_CONFIG/config.json"; echo; echo "host=$DOCKER_HOST"; echo "config=$DOCKER_CONFIG"')
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "700" in lines and "600" in lines
    config = json.loads(next(line for line in lines if line.startswith("{")))
    assert list(config["auths"]) == [registry.address]
    # The build's own Docker endpoint, in its private directory (exact attribution).
    config_dir = next(line for line in lines if line.startswith("config=")).removeprefix("config=")
    assert f"host=unix://{config_dir}/docker.sock" in lines


def test_the_exit_code_of_the_command_is_the_exit_code_of_run_build(manage, agent, registry_configuration):
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c", "exit 7")
    assert result.returncode == 7
    build = Build.objects.get(configuration=registry_configuration)
    assert (build.status, build.exit_code) == (Build.Status.FAILED, 7)


def test_wrong_password_names_the_connection_and_does_not_run_the_command(manage, agent, registry_configuration,
                                                                          config_root, tmp_path):
    connection = registry_configuration.logins.get().connection
    connection.password = "wrong-password-3c9e"
    connection.save()
    marker = tmp_path / "ran"
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "touch", str(marker))
    assert result.returncode == 1
    assert not marker.exists()
    assert f"login with connection '{connection}' to {connection.registry_address} failed:" in result.stderr
    assert "unauthorized" in result.stderr.lower()  # the registry's own answer, quoted
    assert "the command was not run" in result.stderr
    assert "wrong-password-3c9e" not in result.stdout + result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    assert build.status == Build.Status.ERROR and "failed" in build.error
    assert "wrong-password-3c9e" not in build.error
    assert files_below(config_root) == []


def test_an_optional_failed_login_is_a_warning_and_the_build_goes_on(manage, agent, registry_configuration):
    login = registry_configuration.logins.get()
    login.optional = True
    login.save()
    login.connection.password = "wrong"
    login.connection.save()
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "true")
    assert result.returncode == 0, result.stderr
    assert "warning: login with connection" in result.stderr
    build = Build.objects.get(configuration=registry_configuration)
    assert build.status == Build.Status.SUCCEEDED
    assert len(build.warnings) == 1 and "failed" in build.warnings[0]


def test_two_overlapping_builds_on_one_agent_keep_their_credentials(agent, registry_configuration, private_image,
                                                                      config_root, home, manage):
    """The short build logs out while the long one still needs its login to pull."""
    environment = command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    go = home / "short-build-done"
    long_script = (f'while [ ! -e {go} ]; do sleep 0.1; done; cat "$DOCKER_CONFIG/config.json" >/dev/null && '
                   f'docker pull {private_image}')
    long_build = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", registry_configuration.ident, "--agent", agent.name, "--number", "1",
         "--", "sh", "-c", long_script], cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        short = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--number", "2", "--",
                       "sh", "-c", f"docker pull {private_image}")
        assert short.returncode == 0, short.stderr
        go.touch()
        out, err = long_build.communicate(timeout=120)
    finally:
        long_build.kill()
    assert long_build.returncode == 0, out + err
    assert files_below(config_root) == []


def test_sigterm_during_a_build_still_logs_out(agent, registry_configuration, config_root, home):
    environment = command_env(home, DOCKERSUPPORT_AGENT_DIR=str(agent.dir))
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_build", registry_configuration.ident, "--agent", agent.name, "--",
         "sh", "-c", 'echo started; exec sleep 60'], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not any((config_root).rglob("config.json")):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # let the command start
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, out + err
    assert files_below(config_root) == []
    build = Build.objects.get(configuration=registry_configuration)
    assert (build.status, build.docker_config) == (Build.Status.FAILED, "")
    assert build.logged_out_at is not None


def test_ecr_login_through_sts_with_external_id(manage, agent, moto_server, start_service, docker_client,
                                                busybox_image, transactional_db):
    """ECR credentials via STS AssumeRole (moto), verified by the daemon and used to pull.

    moto's token for registry 123456789012 is AWS / 123456789012-auth-token; a registry with that
    login stands in for the ECR registry, reached through the connection's registry address.
    """
    from tests.factories import BuildConfigurationFactory, EcrConnectionFactory, LoginConnectionFactory

    ecr_registry = start_service(Registry(username="AWS", password="123456789012-auth-token"))
    image = f"{ecr_registry.address}/team/app:1"
    docker_client.images.get(busybox_image).tag(image)
    docker_client.images.push(image, auth_config=ecr_registry.auth_config)
    docker_client.images.remove(image)
    configuration = BuildConfigurationFactory()
    connection = EcrConnectionFactory(
        project=configuration.project, registry=ecr_registry.address, endpoint_url=moto_server.endpoint_url,
        credentials="temporary", role_arn="arn:aws:iam::123456789012:role/ci-push", external_id="ext-42",
    )
    LoginConnectionFactory(configuration=configuration, connection=connection)
    result = manage("run_build", configuration.ident, "--agent", agent.name, "--", "docker", "pull", image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"logged in with {connection} → {ecr_registry.address}" in result.stdout
    assert "123456789012-auth-token" not in result.stdout + result.stderr


def test_run_build_and_its_command_see_no_server_setting_and_no_token(manage, agent, registry_configuration):
    """run_build needs no server setting; the command's environment holds none even when run_build's does."""
    script = "env; test -n \"$DOCKER_CONFIG\""
    result = manage("run_build", registry_configuration.ident, "--", "sh", "-c", script,
                    DATABASE_URL="postgres://u:db-password-71@db/x", SECRET_KEY="secret-key-72",
                    DOCKERSUPPORT_ENCRYPTION_KEY="encryption-key-73", CELERY_BROKER_URL="redis://:broker-74@r/0",
                    CACHE_URL="rediscache://:cache-75@r/1")
    assert result.returncode == 0, result.stdout + result.stderr
    # Of dockersupport, it gets the build's report token (report_push) and the agent's socket to send it through.
    given = ("DOCKERSUPPORT_BUILD_TOKEN=dsr_", "DOCKERSUPPORT_AGENT_SOCKET=")
    assert sum(line.startswith(given) for line in result.stdout.splitlines()) == 2
    command_env = "\n".join(line for line in result.stdout.splitlines() if not line.startswith(given))
    for name in ("DATABASE_URL", "SECRET_KEY", "DOCKERSUPPORT_", "CELERY_", "CACHE_URL"):
        assert name not in command_env, name
    for secret in ("db-password-71", "secret-key-72", "encryption-key-73", "broker-74", "cache-75"):
        assert secret not in command_env
    assert agent.process.token not in command_env
    assert "DOCKER_HOST=unix://" in command_env and "/configs/" in command_env  # the build's own endpoint


def test_run_build_runs_with_no_server_setting_at_all(agent, registry_configuration, home, private_image):
    environment = {"PATH": os.environ["PATH"], "HOME": str(home), "DOCKERSUPPORT_AGENT_DIR": str(agent.dir)}
    result = subprocess.run([sys.executable, "manage.py", "run_build", registry_configuration.ident, "--",
                             "docker", "pull", private_image], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_build_logs_in_to_several_registries(manage, agent, registry_configuration, registry, start_service,
                                               docker_client, busybox_image):
    from tests.factories import LoginConnectionFactory

    second = start_service(Registry())
    image = f"{second.address}/other/app:1"
    docker_client.images.get(busybox_image).tag(image)
    docker_client.images.push(image, auth_config=second.auth_config)
    docker_client.images.remove(image)
    LoginConnectionFactory(configuration=registry_configuration, position=1,
                           connection__project=registry_configuration.project, connection__registry=second.address,
                           connection__username=second.username, connection__password=second.password)
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                    f'docker pull {image} && cat "$DOCKER_CONFIG/config.json" && echo')
    assert result.returncode == 0, result.stderr
    config = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"auths"')))
    assert set(config["auths"]) == {registry.address, second.address}
