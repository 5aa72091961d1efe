"""Per-build Docker client config directories (DOCKER_CONFIG): created at login, erased at logout.

Each build gets its own directory (mode 0700) with a config.json (mode 0600) holding only its
registries' credentials, so parallel builds on one host never see or remove each other's. The
user's ~/.docker/config.json is never read or written.
"""

import base64
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from connections.registries import RegistryCredentials

CONFIG_FILE = "config.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def config_dir_create(root: Path, name: str) -> Path:
    """A new private directory below `root`, named after the build plus a random suffix."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Path(tempfile.mkdtemp(prefix=_UNSAFE.sub("-", name)[:60] + "-", dir=root))
    os.chmod(path, 0o700)
    return path


def config_write(path: Path, credentials: list[RegistryCredentials]) -> None:
    """Writes config.json atomically with mode 0600: a reader never sees a half-written file."""
    auths = {
        c.server: {"auth": base64.b64encode(f"{c.username}:{c.password}".encode()).decode()}
        for c in credentials
    }
    fd, temporary = tempfile.mkstemp(dir=path, prefix=".config-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"auths": auths}, handle)
        os.replace(temporary, path / CONFIG_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def config_servers(path: Path) -> set[str]:
    """The registry servers a build's config.json holds credentials for."""
    try:
        return set(json.loads((path / CONFIG_FILE).read_text()).get("auths", {}))
    except FileNotFoundError:
        return set()


def config_dir_remove(path: Path | str, root: Path) -> bool:
    """Erases the build's directory; refuses paths outside `root`. True if something was removed."""
    path = Path(path)
    if not path.is_relative_to(root) or path.resolve() == root.resolve():
        raise ValueError(f"refusing to remove {path}: not a build config directory below {root}")
    if not path.exists():
        return False
    config = path / CONFIG_FILE
    if config.exists():
        # Overwrite before unlinking, so the credentials do not linger in the file's old blocks.
        size = config.stat().st_size
        with open(config, "r+b") as handle:
            handle.write(b"\0" * size)
    shutil.rmtree(path)
    return True
