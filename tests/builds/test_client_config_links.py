"""The config files the agent wrote for a build are overwritten through every hard link the build's command
made to them (when erased, and when fresh tokens replace them); a file of someone else's that the
command linked in is never touched."""

import base64
import os

from agent.config_dirs import CONFIG_FILE, config_dir_create, config_dir_remove, config_write

VICTIM = b'{"precious": true}\n'


def credentials(password: str) -> bytes:
    return base64.b64encode(f"u:{password}".encode())


def test_a_hard_link_to_the_config_reads_zeros_once_the_build_dir_is_erased(tmp_path):
    root = tmp_path / "configs"
    path = config_dir_create(root, "app-1")
    ours = {config_write(path, [("registry.example.com", "u", "pw-1a")])}
    linked = tmp_path / "linked.json"
    os.link(path / CONFIG_FILE, linked)
    assert credentials("pw-1a") in linked.read_bytes()
    assert config_dir_remove(path, root, ours=ours) is True
    content = linked.read_bytes()
    assert content and content == b"\0" * len(content)
    assert not path.exists()


def test_fresh_tokens_overwrite_the_config_they_replace_through_its_links(tmp_path):
    root = tmp_path / "configs"
    path = config_dir_create(root, "app-1")
    ours = {config_write(path, [("registry.example.com", "u", "old-token")])}
    linked = tmp_path / "linked.json"
    os.link(path / CONFIG_FILE, linked)
    ours.add(config_write(path, [("registry.example.com", "u", "new-token")], ours=ours))
    assert set(linked.read_bytes()) == {0}
    assert credentials("new-token") in (path / CONFIG_FILE).read_bytes()
    assert len(ours) == 2


def test_a_victim_file_linked_in_as_config_json_is_untouched_even_with_the_builds_files_known(tmp_path):
    root = tmp_path / "configs"
    path = config_dir_create(root, "app-1")
    ours = {config_write(path, [("registry.example.com", "u", "pw-1b")])}
    victim = tmp_path / "victim.json"
    victim.write_bytes(VICTIM)
    (path / CONFIG_FILE).unlink()
    os.link(victim, path / CONFIG_FILE)
    config_write(path, [("registry.example.com", "u", "pw-2b")], ours=ours)  # replaces the linked-in file
    assert victim.read_bytes() == VICTIM
    (path / CONFIG_FILE).unlink()
    os.link(victim, path / CONFIG_FILE)
    assert config_dir_remove(path, root, ours=ours) is True
    assert victim.read_bytes() == VICTIM
