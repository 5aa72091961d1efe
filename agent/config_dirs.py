"""Per-build Docker client config directories (DOCKER_CONFIG): created at login, erased at logout.

Each build gets its own directory (mode 0700) with a config.json (mode 0600) holding only its
registries' credentials, so parallel builds on one host never see or remove each other's. What
the host's own Docker client config says besides credentials (proxies, CLI plugin settings,
aliases, formats) is kept; its `auths`, `credsStore` and `credHelpers` never reach a build, and
it is never written. When the agent runs as root, a build's directory belongs to the user who
runs the build (run_build), so that its command, and only it, can read it.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path

CONFIG_FILE = "config.json"
CREDENTIAL_KEYS = ("auths", "credsStore", "credHelpers")
_MAX_CONFIG_BYTES = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def host_config_dir() -> Path:
    """The Docker client config of the agent's own host user: DOCKER_CONFIG, else ~/.docker."""
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def host_settings(source: Path | None = None) -> dict:
    """The host's config.json without credentials; empty when there is none or it is unreadable."""
    try:
        data = json.loads(((source or host_config_dir()) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if key not in CREDENTIAL_KEYS}


def config_dir_create(root: Path, name: str, owner: int | None = None, source: Path | None = None) -> Path:
    """A new private directory below `root`, named after the build plus a random suffix.

    `owner`: the uid the directory is given to (the build's user, when the agent runs as root).
    The host's CLI plugins stay usable: `cli-plugins` links to the host's.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    # Others may pass through to their own directory (0700, theirs), never list: never tightened, or
    # the builds of other users that run meanwhile lose their config.
    os.chmod(root, 0o711)
    path = Path(tempfile.mkdtemp(prefix=_UNSAFE.sub("-", name)[:60] + "-", dir=root))
    os.chmod(path, 0o700)
    plugins = (source or host_config_dir()) / "cli-plugins"
    if plugins.is_dir():
        os.symlink(plugins, path / "cli-plugins")
    if owner is not None:
        os.lchown(path, owner, -1)
        if (path / "cli-plugins").is_symlink():
            os.lchown(path / "cli-plugins", owner, -1)
    return path


def config_write(path: Path, logins: Iterable[tuple[str, str, str]], settings: dict | None = None,
                 owner: int | None = None, ours: Collection[tuple[int, int]] = ()) -> tuple[int, int]:
    """Writes config.json atomically with mode 0600: a reader never sees a half-written file.

    `logins`: (server, username, password) of each registry; `settings`: the host's other settings.
    Returns the new file's identity (device, inode). `ours`: the identities of the files written
    for this build before: the config.json replaced (fresh tokens) is overwritten when it is one of
    them, so that a hard link the build's command made to it reads no credentials.
    """
    auths = {
        server: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        for server, username, password in logins
    }
    fd, temporary = tempfile.mkstemp(dir=path, prefix=".config-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, owner, -1)
        info = os.fstat(fd)
        with os.fdopen(fd, "w") as handle:
            json.dump({**(settings or {}), "auths": auths}, handle)
        previous = _open_config(path)
        try:
            os.replace(temporary, path / CONFIG_FILE)
            if previous is not None:
                with contextlib.suppress(OSError):  # the new config is in place: that is what counts
                    _zero_fill(previous, ours, names=0)
        finally:
            if previous is not None:
                os.close(previous)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return info.st_dev, info.st_ino


def config_dir_remove(path: Path | str, root: Path, ours: Collection[tuple[int, int]] = ()) -> bool:
    """Erases a build's directory (a direct child of `root`, as config_dir_create makes them).

    Refuses, with ValueError naming the path, anything else: a path that leaves root through `..`
    or a symbolic link, a link named like a build directory, root itself. The build's command can
    write in its directory, so nothing inside is trusted: config.json is overwritten only if it
    is a regular file that the agent wrote for the build (`ours`: the identities config_write
    returned; then through every hard link the command made to it) or that has no other name
    (never a file elsewhere that the command linked in), and the tree is removed without
    following links. True if something was removed.
    """
    path = Path(path)
    real_root = os.path.realpath(root)
    # The parent's real path, not the directory's: a link named like a build dir must not resolve away.
    if path.name in ("", ".", "..") or os.path.realpath(path.parent) != real_root:
        raise ValueError(f"refusing to remove {path}: not a build config directory directly below {root}")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise ValueError(f"refusing to remove {path}: {kind}, not a build config directory below {root}")
    _zero_fill_config(path, ours)
    shutil.rmtree(path)  # on Linux fd-based: never follows a link inside, refuses a link at the top
    return True


def _zero_fill_config(path: Path, ours: Collection[tuple[int, int]] = ()) -> None:
    """Overwrites config.json before it is unlinked, so the credentials do not linger in the file's
    old blocks nor in a hard link to it; only when it is safely the build's own file."""
    fd = _open_config(path)
    if fd is None:
        return  # missing, a link, a FIFO...: nothing of ours to overwrite
    try:
        _zero_fill(fd, ours)
    finally:
        os.close(fd)


def _zero_fill(fd: int, ours: Collection[tuple[int, int]], names: int = 1) -> None:
    """Zeroes the file of `fd` when it is ours: one config_write wrote, or one with no other name than
    the `names` it has in the build's directory."""
    info = os.fstat(fd)
    # A file with another name may be a file outside that the command linked in: zeroing it would
    # destroy that file. One the agent wrote is overwritten wherever the command linked it. The
    # config we write is a few kilobytes; a huge file is not ours and not worth the time.
    mine = (info.st_dev, info.st_ino) in ours or info.st_nlink == names
    if stat.S_ISREG(info.st_mode) and mine and info.st_size <= _MAX_CONFIG_BYTES:
        os.lseek(fd, 0, os.SEEK_SET)
        zeros = b"\0" * info.st_size
        while zeros:
            zeros = zeros[os.write(fd, zeros):]
        os.fsync(fd)


def _open_config(path: Path) -> int | None:
    """config.json opened for writing without following a link, or None."""
    # O_NOFOLLOW: a link is not opened (ELOOP); O_NONBLOCK: a FIFO does not hang the logout.
    flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        if os.open in os.supports_dir_fd:
            # Relative to the directory opened without following a link: swapping the directory
            # for a link after config_dir_remove's checks leads nowhere.
            directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                return os.open(CONFIG_FILE, flags, dir_fd=directory)
            finally:
                os.close(directory)
        # Windows has neither dir_fd nor O_NOFOLLOW: lstat before opening says whether it is a
        # link, and the same file after opening that it was not swapped in between.
        before = os.lstat(path / CONFIG_FILE)
        if not stat.S_ISREG(before.st_mode):
            return None
        fd = os.open(path / CONFIG_FILE, flags)
        if not os.path.samestat(before, os.fstat(fd)):
            os.close(fd)
            return None
        return fd
    except OSError:
        return None
