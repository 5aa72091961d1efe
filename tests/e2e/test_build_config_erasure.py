"""A build's config.json reads no credentials once the build has ended, even through a hard link its
command made to it (a copy tool, a cache, `cp -al`): the agent overwrites the file it wrote, wherever
it is linked, before erasing the directory."""

import base64

import pytest

pytestmark = [pytest.mark.e2e]


def test_a_hard_link_to_the_builds_config_reads_no_credentials_after_the_build(manage, agent, registry,
                                                                               registry_configuration):
    stolen = agent.dir.parent / "linked-config.json"  # outside the build's directory, on the same filesystem
    result = manage("run_build", registry_configuration.ident, "--agent", agent.name, "--", "sh", "-c",
                    f'ln "$DOCKER_CONFIG/config.json" {stolen} && grep -q auths {stolen}')
    assert result.returncode == 0, result.stdout + result.stderr
    content = stolen.read_bytes()
    credentials = base64.b64encode(f"{registry.username}:{registry.password}".encode())
    assert len(content) > len(credentials) and content == b"\0" * len(content)
    assert credentials not in content and registry.password.encode() not in content
