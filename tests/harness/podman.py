"""A private Podman: Debian's podman serving its Docker-compatible API (`podman system service`) on a socket
of its own, with its own storage (vfs), run root, events log and configuration, and no network.

The podman CLI is run against the same storage with `cli_env()` (its events reach the service's stream: both
log them to the same file). Registries on 127.0.0.1 and localhost are plain http for it (registries.conf), as
they are for the harness's dockerd; but its API's login check (`POST /auth`, which the agent verifies logins
with) tries plain http for `localhost:PORT` alone, so a registry a build logs in to through Podman is named so.
"""

import os
import subprocess

from .dockerd import _kill_processes_mentioning, _unmount_below, api_answers, busybox_tarball
from .service import Service, find_program

# Podman raises a container's open-files and processes limits to its own defaults, which a sandboxed host
# (these machines: 20,000 files) refuses (`error setting rlimit`): containers get limits the host allows.
ULIMITS = ["nofile=1024:1024", "nproc=1024:1024"]


class Podman(Service):
    """`podman system service` on <root>/podman.sock (.host), rootful, vfs storage, events in a file."""

    name = "podman"
    start_timeout = 60.0

    @property
    def host(self):
        return f"unix://{self.root}/podman.sock" if self.root else None

    def client(self, **kwargs):
        import docker

        return docker.DockerClient(base_url=self.host, **kwargs)

    def cli_env(self, base=None) -> dict:
        """The environment a podman CLI of this Podman runs with (storage, configuration, registries)."""
        env = dict(os.environ if base is None else base)
        env.update({
            "CONTAINERS_STORAGE_CONF": f"{self.root}/storage.conf",
            "CONTAINERS_CONF": f"{self.root}/containers.conf",
            "CONTAINERS_REGISTRIES_CONF": f"{self.root}/registries.conf",
        })
        return env

    def podman(self, *args, check=True, env=None, timeout=120) -> subprocess.CompletedProcess:
        """The podman CLI on this Podman's storage."""
        return subprocess.run([self.program, *args], env=self.cli_env(env), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def import_busybox(self, reference="localhost/dockersupport-test/busybox:latest") -> str:
        """`podman import` of the harness's busybox root filesystem; returns the reference."""
        tarball = os.path.join(self.root, "busybox.tar")
        with open(tarball, "wb") as f:
            f.write(busybox_tarball())
        self.podman("import", "--change", "ENV PATH=/bin", "--change", 'CMD ["sh"]', tarball, reference)
        return reference

    def _prepare(self):
        self.program = find_program("podman", "/usr/bin/podman")
        r = self.root
        with open(f"{r}/storage.conf", "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\nrunroot = "{r}/run"\ngraphroot = "{r}/storage"\n')
        limits = ", ".join(f'"{limit}"' for limit in ULIMITS)
        with open(f"{r}/containers.conf", "w") as f:
            f.write(f'[containers]\nnetns = "none"\ndefault_ulimits = [{limits}]\n\n'
                    f'[engine]\nevents_logger = "file"\nevents_logfile_path = "{r}/events.log"\n'
                    f'cgroup_manager = "cgroupfs"\ntmp_dir = "{r}/tmp"\nvolume_path = "{r}/volumes"\n')
        with open(f"{r}/registries.conf", "w") as f:
            f.write('unqualified-search-registries = []\n')
            for host in ("127.0.0.1", "localhost"):
                f.write(f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n')

    def _environment(self):
        return self.cli_env()

    def _command(self):
        return [self.program, "system", "service", "--time=0", self.host]

    def _ready(self):
        return api_answers(self, f"{self.root}/podman.sock")

    def stop(self, keep_data=False):
        """On a final stop, remove every container first (their conmon processes outlive the service)."""
        if not keep_data and self.running:
            self.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=60)
        return super().stop(keep_data)

    def _after_stop(self):
        _kill_processes_mentioning(self.root, unless=b"agent.docker_proxy")
        _unmount_below(self.root)
