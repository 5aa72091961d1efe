#!/usr/bin/env bash
# `make run`: migrate, make sure an admin user exists, then serve the admin at
# http://127.0.0.1:8000/admin/ with a Celery worker, beat and a local agent for this machine's
# Docker daemon (a shared agent named `local`, with a new token each start). Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
. scripts/env.sh
VENV_BIN=$(dirname "$PYTHON")

"$PYTHON" manage.py migrate --no-input -v 0
"$PYTHON" manage.py collectstatic --no-input -v 0  # the admin is styled with DEBUG off too
"$PYTHON" manage.py ensure_superuser
# The local agent: its own token (the file is 0600 under the umask of env.sh), its own folder.
AGENT_DIR=${DOCKERSUPPORT_AGENT_DIR:-$PWD/var/agent}
"$PYTHON" manage.py agent_token "${AGENT_NAME:-local}" > var/agent-token 2>/dev/null

pids=()
stop() {  # TERM to each, up to 10 s to finish, then KILL: Ctrl-C never leaves anything running
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

# Embedded mode runs tasks in-process, so this worker has little to do: threads, no forked pool.
"$VENV_BIN/celery" -A dockersupport_site worker -Q server -l warning -P threads --concurrency 2 &
pids+=($!)
"$VENV_BIN/celery" -A dockersupport_site beat -l warning -s var/celerybeat-schedule &
pids+=($!)
echo "Serving the admin at http://127.0.0.1:${PORT:-8000}/admin/ (Ctrl-C stops the server, the worker, beat and the agent)"
"$PYTHON" manage.py runserver "127.0.0.1:${PORT:-8000}" --noreload &
pids+=($!)
core=("${pids[@]}")  # when one of these ends, everything stops; the agent may come and go
# The agent gets none of the server's settings: only its token file, its folder and its daemon.
env -i PATH="$PATH" HOME="$HOME" LANG="${LANG:-C.UTF-8}" DOCKERSUPPORT_AGENT_DIR="$AGENT_DIR" \
  ${DOCKER_HOST:+DOCKER_HOST="$DOCKER_HOST"} \
  "$PYTHON" manage.py agent --server "http://127.0.0.1:${PORT:-8000}" --token-file var/agent-token &
pids+=($!)
echo "Run builds on this machine with: DOCKERSUPPORT_AGENT_DIR=$AGENT_DIR $PYTHON manage.py run_build CONFIG -- COMMAND"
wait -n "${core[@]}"
