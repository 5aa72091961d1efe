#!/usr/bin/env bash
# `make test`, step 1: the Debian 12 packages the test suite runs for real (tests/harness): Docker
# daemon, Podman, registry, static busybox for the test image, Chromium for browser tests, and PostgreSQL
# and Redis unless they are already there. Only apt downloads; nothing happens when all is present.
set -euo pipefail

missing=()
need_package() {  # need_package PACKAGE: add it to the list unless dpkg has it installed
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || missing+=("$1")
}
answers() {  # answers PORT: something listens on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

need_package docker.io        # dockerd, containerd, runc
need_package docker-registry  # distribution v2 registry
need_package busybox-static   # the busybox test image needs a static binary
need_package docker-compose   # Debian's docker-compose (1.29), run through a build's own Docker endpoint
need_package podman           # an agent driving Podman (its Docker-compatible API service and CLI)
need_package chromium
if ! command -v postgres >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && ! answers 5432; then
  need_package postgresql
fi
if ! command -v redis-server >/dev/null && ! answers 6379; then
  need_package redis-server
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-test-deps: all test packages are installed"
  exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-test-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
