#!/usr/bin/env bash
# Runs a manage.py command with the embedded defaults of `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
. scripts/env.sh
exec "$PYTHON" manage.py "$@"
