"""A private Docker daemon, and a busybox image made from the host's static busybox (no network)."""

import ctypes
import io
import json
import os
import signal
import struct
import subprocess
import tarfile
import time

from .service import Service, ServiceUnavailable, find_program

BUSYBOX_IMAGE = "dockersupport-test/busybox:latest"


class DockerDaemon(Service):
    """Debian's dockerd with its own data, exec root, socket and managed containerd.

    vfs storage, no bridge and no iptables: it runs anywhere (inside containers too) and several
    daemons can run side by side. Containers must use ``network_mode="none"``.
    """

    name = "dockerd"
    start_timeout = 60.0
    stop_timeout = 20.0

    def __init__(self, extra_args=()):
        super().__init__()
        self.extra_args = list(extra_args)

    @property
    def host(self):
        return f"unix://{self.root}/docker.sock" if self.root else None

    @property
    def data_root(self):
        return os.path.join(self.root, "data") if self.root else None

    def client(self, **kwargs):
        import docker

        return docker.DockerClient(base_url=self.host, **kwargs)

    def _prepare(self):
        self.program = find_program("dockerd", "/usr/sbin/dockerd")
        # Our own configuration, so that the host's /etc/docker/daemon.json does not apply, and our own
        # identity key instead of /etc/docker/key.json: each daemon gets a distinct ID (info()["ID"]).
        with open(os.path.join(self.root, "daemon.json"), "w") as f:
            json.dump({"deprecated-key-path": os.path.join(self.root, "key.json")}, f)

    def _command(self):
        r = self.root
        return [
            self.program,
            f"--config-file={r}/daemon.json",
            f"--data-root={r}/data",
            f"--exec-root={r}/x",  # the managed containerd lives here too: no clash with other daemons
            f"--pidfile={r}/dockerd.pid",
            f"--host=unix://{r}/docker.sock",
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--shutdown-timeout=5",
            *self.extra_args,
        ]

    def _ready(self):
        return api_answers(self, f"{self.root}/docker.sock")

    def stop(self, keep_data=False):
        """On a final stop, kill containers first: the daemon would give each 10 s to end on SIGTERM."""
        if not keep_data and self.running:
            try:
                client = self.client(timeout=10)
                for container in client.containers.list():
                    container.kill()
                client.close()
            except Exception:  # the daemon is not answering: the signals below end it anyway
                pass
        return super().stop(keep_data)

    def _after_stop(self):
        """Kill container shims left behind by a killed daemon, then unmount what it left mounted. A build's
        own Docker endpoint names the daemon's socket too: it outlives a daemon restart, as it would on a host."""
        _kill_processes_mentioning(self.root, unless=b"agent.docker_proxy")
        _unmount_below(self.root)


def api_answers(service, socket_path) -> bool:
    """The Docker API of `service` (a daemon, Podman) answers a ping on its socket."""
    if not os.path.exists(socket_path):
        return False
    client = service.client(timeout=5)
    try:
        return client.ping()
    finally:
        client.close()


def _kill_processes_mentioning(path, unless=None):
    """SIGKILL the processes whose command line names a path of ours (shims run in their own session),
    but those whose command line holds `unless`."""
    needle = path.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
            if needle in command and not (unless and unless in command):
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    time.sleep(0.05)


def _unmount_below(path):
    """Lazily unmount every mount point under path, deepest first."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 for spaces
            if point == path or point.startswith(path + "/"):
                mounts.append(point)
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(mounts, key=len, reverse=True):
        libc.umount2(point.encode(), 2)  # MNT_DETACH


def _is_static(path):
    """True when the ELF file has no program interpreter, so it runs in an empty image."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP


def busybox_tarball():
    """A root filesystem with Debian's static busybox and a link for each of its applets."""
    busybox = find_program("busybox", "/bin/busybox")
    if not _is_static(busybox):
        raise ServiceUnavailable(f"{busybox} is not statically linked (install busybox-static)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name, type_=tarfile.DIRTYPE, mode=0o755, data=b"", link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname = type_, mode, len(data), link
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d, mode in [("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)]:
            add(d, mode=mode)
        with open(busybox, "rb") as f:
            add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for applet in sorted(set(applets) - {"busybox"}):
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def import_busybox_image(client, repository="dockersupport-test/busybox", tag="latest"):
    """`docker import` of busybox_tarball() into the daemon of client; returns the Image."""
    client.api.import_image_from_data(
        busybox_tarball(), repository=repository, tag=tag, changes=["ENV PATH=/bin", 'CMD ["sh"]']
    )
    return client.images.get(f"{repository}:{tag}")
