#!/usr/bin/env bash
# `make run`: migrate, make sure an admin user exists, then serve the admin at
# http://127.0.0.1:8000/admin/ with a Celery worker and beat. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
. scripts/env.sh
VENV_BIN=$(dirname "$PYTHON")

"$PYTHON" manage.py migrate --no-input -v 0
"$PYTHON" manage.py ensure_superuser

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$VENV_BIN/celery" -A dockersupport_site worker -Q server -l warning --concurrency 2 &
pids+=($!)
"$VENV_BIN/celery" -A dockersupport_site beat -l warning -s var/celerybeat-schedule &
pids+=($!)
echo "Serving the admin at http://127.0.0.1:${PORT:-8000}/admin/ (Ctrl-C stops the server, the worker and beat)"
"$PYTHON" manage.py runserver "127.0.0.1:${PORT:-8000}" --noreload &
pids+=($!)
wait -n "${pids[@]}"
