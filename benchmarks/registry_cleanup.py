"""Registry clean-up: `pending_deletions_process` vs a sequential `skopeo delete` loop, on 500 images.

Starts its own registry (tests/harness: Debian's docker-registry, htpasswd auth, deletes enabled)
and an SQLite database in a temporary folder. It makes 2 x N distinct images through the registry
HTTP API (no Docker daemon): one small layer blob per repository, then per image a config blob of
its own and a Docker v2 schema 2 manifest tagged `t<N>`; N in `bench/ours`, N in `bench/skopeo`.

  ours:   N pending PushedImage tombstones (digest from the PUT's Docker-Content-Digest) deleted by
          `builds.cleanup.registry.pending_deletions_process()`: claim, find the connection, list the
          repository's tags and HEAD each (shared-digest safety), DELETE by digest with 8 threads,
          record each outcome;
  skopeo: `skopeo delete --tls-verify=false --creds ... docker://<registry>/bench/skopeo:t<N>`,
          one after the other (Debian's `skopeo` package).

Both sides are checked: every image deleted, every manifest then answers 404, every skopeo exit
code is 0. Prints the wall times, images per second and the ratio skopeo / ours. With --rounds
the whole thing (fresh images included) is repeated and the best time of each side counts, so that
a busy spell of a shared machine does not decide the ratio.
Target: ours >= 3x faster than the skopeo loop.

The registry runs on the same machine as both clients: ours is bound by the registry's own CPU
(an htpasswd bcrypt check per request, and a scan of every tag of the repository per manifest
DELETE), which skopeo pays too; ours wins by overlapping requests, skopeo loses a process per image.

    .venv/bin/python benchmarks/registry_cleanup.py [--images 500] [--rounds 3]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import Registry  # noqa: E402

TARGET_RATIO = 3
SETUP_THREADS = 8
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_ALL = ", ".join([
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    MANIFEST_V2,
    "application/vnd.oci.image.manifest.v1+json",
])


class RegistryClient:
    """Just enough of the registry API to make images: one requests.Session per thread, Basic auth."""

    def __init__(self, registry):
        self.url, self.auth = registry.url, (registry.username, registry.password)
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.auth = self.auth
        return self._local.session

    def upload_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = self.http.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=30)
        if started.status_code != 202:
            raise SystemExit(f"starting a blob upload to {repository}: HTTP {started.status_code} {started.text}")
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        done = self.http.put(location, params={"digest": digest}, data=data,
                             headers={"Content-Type": "application/octet-stream"}, timeout=30)
        if done.status_code != 201:
            raise SystemExit(f"uploading blob {digest} to {repository}: HTTP {done.status_code} {done.text}")
        return digest

    def put_manifest(self, repository: str, tag: str, manifest: bytes) -> str:
        response = self.http.put(f"{self.url}/v2/{repository}/manifests/{tag}", data=manifest,
                                 headers={"Content-Type": MANIFEST_V2}, timeout=30)
        if response.status_code != 201:
            raise SystemExit(f"putting manifest {repository}:{tag}: HTTP {response.status_code} {response.text}")
        digest = response.headers["Docker-Content-Digest"]
        if digest != "sha256:" + hashlib.sha256(manifest).hexdigest():
            raise SystemExit(f"{repository}:{tag}: the registry's digest {digest} is not the manifest's own")
        return digest

    def manifest_status(self, repository: str, reference: str) -> int:
        return self.http.head(f"{self.url}/v2/{repository}/manifests/{reference}",
                              headers={"Accept": ACCEPT_ALL}, timeout=30).status_code


def make_images(client: RegistryClient, pool: ThreadPoolExecutor, repository: str, count: int,
                round_number: int = 1) -> dict[int, str]:
    """`count` distinct images t1..t<count> sharing one layer; returns {number: manifest digest}."""
    layer = b"dockersupport registry clean-up benchmark layer\n" * 8  # its content does not matter to a registry
    layer_digest = client.upload_blob(repository, layer)

    def one(number: int) -> tuple[int, str]:
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"bench": f"{repository}#{number}.{round_number}"}},  # what makes it distinct
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }).encode()
        config_digest = client.upload_blob(repository, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": LAYER_GZIP, "size": len(layer), "digest": layer_digest}],
        }).encode()
        return number, client.put_manifest(repository, f"t{number}", manifest)

    return dict(pool.map(one, range(1, count + 1)))


def statuses(client: RegistryClient, pool: ThreadPoolExecutor, repository: str, references) -> list[int]:
    return list(pool.map(lambda reference: client.manifest_status(repository, reference), references))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"benchmark set-up or check failed: {message}")


def django_setup(folder: str) -> None:
    os.environ.update({
        "DATABASE_URL": f"sqlite:///{folder}/db.sqlite3",
        "DOCKERSUPPORT_ENCRYPTION_KEY": "x4wSSpAHrwsH3EYuxkHzGm9cR4bEXcWyxt8Qz5e5xHA=",
        "SECRET_KEY": "bench",
        "DJANGO_SETTINGS_MODULE": "dockersupport_site.settings",
        "DEBUG": "1",
        "DOCKERSUPPORT_DATA_DIR": folder,
    })
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def bench_project(registry):
    from connections.models import Connection, Project

    project = Project.objects.create(ident="bench", name="bench")
    Connection.objects.create(project=project, ident="registry", type=Connection.Type.DOCKER_REGISTRY,
                              registry=registry.address, username=registry.username, password=registry.password)
    return project


def tombstones(project, registry, digests: dict[int, str]) -> None:
    from django.utils import timezone

    from builds.models import PushedImage

    now = timezone.now()
    PushedImage.objects.bulk_create([
        PushedImage(build=None, project=project, configuration_ident="bench", build_number=number,
                    registry=registry.address, repository="bench/ours", tag=f"t{number}", digest=digest,
                    pushed_at=now, cleanup_status=PushedImage.CleanupStatus.PENDING, next_attempt_at=now)
        for number, digest in digests.items()
    ], batch_size=500)


def one_round(registry, client, pool, project, count: int, round_number: int) -> tuple[float, float, float]:
    """Makes 2 x count images, deletes each half one way; returns (seconds to make, ours, skopeo loop)."""
    from builds.cleanup.registry import pending_deletions_process

    start = time.perf_counter()
    ours_digests = make_images(client, pool, "bench/ours", count, round_number)
    skopeo_digests = make_images(client, pool, "bench/skopeo", count, round_number)
    made_in = time.perf_counter() - start
    require(len(set(ours_digests.values()) | set(skopeo_digests.values())) == 2 * count,
            "the images are not all distinct")
    sample = sorted({1, count // 2 or 1, count})
    for repository, digests in (("bench/ours", ours_digests), ("bench/skopeo", skopeo_digests)):
        found = statuses(client, pool, repository, [f"t{n}" for n in sample] + [digests[n] for n in sample])
        require(all(code == 200 for code in found), f"{repository}: sample manifests answered {found}")
    tombstones(project, registry, ours_digests)

    start = time.perf_counter()
    result = pending_deletions_process()
    ours = time.perf_counter() - start
    require(result == {"deleted": count}, f"pending_deletions_process() returned {result}")
    left = statuses(client, pool, "bench/ours", list(ours_digests.values()))
    require(all(code == 404 for code in left), f"{sum(c != 404 for c in left)} manifest(s) of ours still there")

    env = {**os.environ, "HOME": os.environ["DOCKERSUPPORT_DATA_DIR"]}  # no user's auth or policy files
    creds = f"{registry.username}:{registry.password}"
    start = time.perf_counter()
    for number in range(1, count + 1):
        done = subprocess.run(
            ["skopeo", "delete", "--tls-verify=false", "--creds", creds,
             f"docker://{registry.address}/bench/skopeo:t{number}"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        require(done.returncode == 0, f"skopeo delete t{number} exited {done.returncode}: {done.stderr.strip()}")
    sequential = time.perf_counter() - start
    left = statuses(client, pool, "bench/skopeo", list(skopeo_digests.values()))
    require(all(code == 404 for code in left), f"{sum(c != 404 for c in left)} manifest(s) of skopeo still there")
    return made_in, ours, sequential


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images deleted by each side (default 500)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of fresh images; the best time of each side counts (default 3)")
    args = parser.parse_args()
    if not shutil.which("skopeo"):
        raise SystemExit("skopeo is not installed: apt-get install -y skopeo")
    count = args.images

    with tempfile.TemporaryDirectory() as folder, Registry() as registry, \
            ThreadPoolExecutor(SETUP_THREADS) as pool:
        client = RegistryClient(registry)
        django_setup(folder)
        project = bench_project(registry)
        rounds = [one_round(registry, client, pool, project, count, number) for number in range(1, args.rounds + 1)]

    ours, sequential = min(r[1] for r in rounds), min(r[2] for r in rounds)
    ratio = sequential / ours
    print(f"Deleting {count} pushed images from a local registry "
          f"({2 * count} images made in {rounds[0][0]:.1f} s per round):")
    if len(rounds) > 1:
        for number, (_, one_ours, one_sequential) in enumerate(rounds, start=1):
            print(f"  round {number}: ours {one_ours:6.2f} s, skopeo {one_sequential:6.2f} s")
        print(f"  best of {len(rounds)} rounds:")
    print(f"  pending_deletions_process: {ours:8.2f} s  {count / ours:8.1f} images/s")
    print(f"  sequential skopeo delete:  {sequential:8.2f} s  {count / sequential:8.1f} images/s")
    print(f"  ratio skopeo / ours:       {ratio:8.1f} x   "
          f"(target >= {TARGET_RATIO} x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})")


if __name__ == "__main__":
    main()
