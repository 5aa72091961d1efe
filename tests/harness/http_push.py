"""A push no Docker daemon sees: an image uploaded straight through a registry's HTTP API, as kaniko, buildah or
buildx with a container driver do (blobs, then the manifest: the distribution spec's push).

In a test: `push_image(url, repository, tag, auth=(user, password))`. In a build's command, with the build's own
credentials (its DOCKER_CONFIG), printing the digest:

    python -m tests.harness.http_push 127.0.0.1:5000/team/app:1
"""

import base64
import hashlib
import json
import os
import sys
import uuid

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(url: str, repository: str, data: bytes, auth) -> str:
    digest = _digest(data)
    started = requests.post(f"{url}/v2/{repository}/blobs/uploads/", auth=auth, timeout=30)
    assert started.status_code == 202, f"starting an upload: HTTP {started.status_code} {started.text[:300]}"
    location = started.headers["Location"]
    if location.startswith("/"):
        location = url + location
    separator = "&" if "?" in location else "?"
    done = requests.put(f"{location}{separator}digest={digest}", data=data, auth=auth, timeout=30,
                        headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, f"uploading {digest}: HTTP {done.status_code} {done.text[:300]}"
    return digest


def push_image(url: str, repository: str, tag: str, auth=None) -> str:
    """Pushes a small image of its own (a random layer: its own digest) as `repository:tag`; returns its digest."""
    layer = f"layer {uuid.uuid4().hex}".encode()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _upload(url, repository, config,
                                                                                               auth),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _upload(url, repository, layer,
                                                                                              auth),
                    "size": len(layer)}],
    }).encode()
    response = requests.put(f"{url}/v2/{repository}/manifests/{tag}", data=manifest, auth=auth, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, f"putting the manifest: HTTP {response.status_code} {response.text[:300]}"
    return _digest(manifest)


def _credentials(registry: str):
    """The build's credentials for `registry` from its DOCKER_CONFIG, as kaniko reads them."""
    with open(os.path.join(os.environ["DOCKER_CONFIG"], "config.json")) as handle:
        auths = json.load(handle).get("auths", {})
    entry = auths.get(registry)
    if not entry:
        return None
    username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return username, password


def main(argv: list[str]) -> int:
    reference = argv[0]
    registry, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    print(push_image(f"http://{registry}", repository, tag, auth=_credentials(registry)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
