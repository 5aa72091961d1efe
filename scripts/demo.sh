#!/usr/bin/env bash
# `make demo`: loads demo/settings.yaml into the database `make run` uses (migrated first, so it works
# before the first `make run` too), then says what it loaded, the command that runs a demo build on
# this machine, and what the machine lacks for it (demo/report.py checks each for real).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
. scripts/env.sh
# The file's ${VARIABLES}: a local registry (a registry without authentication takes any password), and
# the agent that `make run` starts (scripts/run.sh: AGENT_NAME, default local) and its folder.
export DEMO_REGISTRY=${DEMO_REGISTRY:-127.0.0.1:5000}
export DEMO_REGISTRY_USERNAME=${DEMO_REGISTRY_USERNAME:-ci}
export DEMO_REGISTRY_PASSWORD=${DEMO_REGISTRY_PASSWORD:-demo-password}
export DEMO_AGENT=${AGENT_NAME:-local}
export DEMO_AGENT_DIR=${DOCKERSUPPORT_AGENT_DIR:-$PWD/var/agent}
export PYTHON
"$PYTHON" manage.py migrate --no-input -v 0
"$PYTHON" manage.py apply_settings demo/settings.yaml
exec "$PYTHON" demo/report.py
