"""config_dir_remove erases a build's own config directory and nothing else, whatever the build's
command left in it (it can write there: links to files and directories outside, hard links)."""

import os
import stat

import pytest

from agent.config_dirs import CONFIG_FILE, config_dir_create, config_dir_remove, config_write

VICTIM = b'{"precious": true}\n'


@pytest.fixture
def root(tmp_path):
    return tmp_path / "build-configs"


@pytest.fixture
def victim(tmp_path):
    """A file outside root that no removal may change."""
    path = tmp_path / "victim.json"
    path.write_bytes(VICTIM)
    return path


@pytest.fixture(params=["dir_fd", "no dir_fd"])
def platform(request, monkeypatch):
    """Linux and macOS open config.json relative to the directory; Windows has no dir_fd."""
    if request.param == "no dir_fd":
        monkeypatch.setattr(os, "supports_dir_fd", set())
    return request.param


@pytest.fixture
def build_dir(root):
    path = config_dir_create(root, "app-1")
    config_write(path, [("registry.example.com", "u", "pw-5e1f")])
    return path


def test_a_build_dir_is_zero_filled_and_removed(build_dir, root, monkeypatch, platform):
    written = {}
    real_rmtree = __import__("shutil").rmtree

    def rmtree(path, *args, **kwargs):  # look at config.json just before it goes
        written["config"] = (path / CONFIG_FILE).read_bytes()
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr("agent.config_dirs.shutil.rmtree", rmtree)
    size = (build_dir / CONFIG_FILE).stat().st_size
    assert config_dir_remove(build_dir, root) is True
    assert written["config"] == b"\0" * size and size > 0
    assert not build_dir.exists() and root.is_dir()
    assert config_dir_remove(build_dir, root) is False  # already gone: harmless
    assert config_dir_remove(str(build_dir), root) is False


def test_a_path_that_leaves_root_through_dot_dot_is_refused(root, victim):
    root.mkdir()
    outside = victim.parent / "victim-dir"
    outside.mkdir()
    (outside / "data").write_bytes(VICTIM)
    for path in (root / ".." / "victim-dir", root / ".." / victim.name, root / "x" / ".." / ".." / "victim-dir"):
        with pytest.raises(ValueError, match=f"refusing to remove {path}: not a build config directory"):
            config_dir_remove(path, root)
    assert (outside / "data").read_bytes() == VICTIM and victim.read_bytes() == VICTIM


def test_root_itself_and_deeper_paths_are_refused(build_dir, root):
    (build_dir / "sub").mkdir()
    for path in (root, root / ".", build_dir / "sub", build_dir / ".."):
        with pytest.raises(ValueError, match="refusing to remove"):
            config_dir_remove(path, root)
    assert build_dir.is_dir()


def test_a_link_named_like_a_build_dir_is_refused(root, victim):
    root.mkdir()
    outside = victim.parent / "outside"
    outside.mkdir()
    (outside / CONFIG_FILE).write_bytes(VICTIM)
    link = root / "app-2-abc123"
    link.symlink_to(outside)
    with pytest.raises(ValueError, match=f"refusing to remove {link}: a symbolic link"):
        config_dir_remove(link, root)
    assert (outside / CONFIG_FILE).read_bytes() == VICTIM
    assert link.is_symlink()


def test_a_root_reached_through_a_link_still_works(build_dir, root, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert config_dir_remove(alias / build_dir.name, root) is True
    assert not build_dir.exists()


def test_config_json_replaced_by_a_link_to_a_victim_file(build_dir, root, victim, platform):
    (build_dir / CONFIG_FILE).unlink()
    (build_dir / CONFIG_FILE).symlink_to(victim)
    assert config_dir_remove(build_dir, root) is True
    assert victim.read_bytes() == VICTIM
    assert not build_dir.exists()


def test_config_json_as_a_hard_link_to_a_victim_file(build_dir, root, victim, platform):
    (build_dir / CONFIG_FILE).unlink()
    os.link(victim, build_dir / CONFIG_FILE)
    assert config_dir_remove(build_dir, root) is True
    assert victim.read_bytes() == VICTIM
    assert not build_dir.exists()


def test_a_link_inside_to_a_victim_directory(build_dir, root, victim):
    outside = victim.parent / "victim-dir"
    (outside / "deeper").mkdir(parents=True)
    (outside / "deeper" / "data").write_bytes(VICTIM)
    (build_dir / "escape").symlink_to(outside)
    (build_dir / "nested").mkdir()
    (build_dir / "nested" / "escape").symlink_to(outside / "deeper")
    assert config_dir_remove(build_dir, root) is True
    assert (outside / "deeper" / "data").read_bytes() == VICTIM
    assert not build_dir.exists()


def test_config_json_as_a_fifo_does_not_hang(build_dir, root, platform):
    (build_dir / CONFIG_FILE).unlink()
    os.mkfifo(build_dir / CONFIG_FILE)
    assert stat.S_ISFIFO((build_dir / CONFIG_FILE).lstat().st_mode)
    assert config_dir_remove(build_dir, root) is True
    assert not build_dir.exists()


def test_the_config_root_stays_passable_for_other_users_builds(tmp_path):
    """A build of another user must keep reaching its own config when a build of the agent's own user starts."""
    import stat as stat_module

    root = tmp_path / "configs"
    config_dir_create(root, "theirs", owner=os.geteuid())
    config_dir_create(root, "ours")
    assert stat_module.S_IMODE(root.stat().st_mode) == 0o711
