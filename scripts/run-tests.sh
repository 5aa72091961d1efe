#!/usr/bin/env bash
# `make test`, step 2: make sure PostgreSQL and Redis answer (the local ones, or private ones started
# here and stopped on exit), then run the whole suite on PostgreSQL and, without the e2e tests, on
# SQLite. The Docker daemon, registry and AWS test server are started by the pytest fixtures
# (tests/harness). Extra arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d /tmp/ds-tests-XXXXXX)
chmod 755 "$TMP"  # a private PostgreSQL runs as another user and keeps its data below
PG_CTL=() REDIS_PIDFILE=""

say() { echo "run-tests: $*"; }
die() { say "$*" >&2; exit 1; }

cleanup() {
  if [ ${#PG_CTL[@]} -gt 0 ]; then "${PG_CTL[@]}" -m immediate -w stop >/dev/null 2>&1; fi
  if [ -n "$REDIS_PIDFILE" ] && [ -f "$REDIS_PIDFILE" ]; then kill "$(cat "$REDIS_PIDFILE")" 2>/dev/null; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_ready() {  # pg_ready PORT: postgres@127.0.0.1:PORT lets us in without a password; creates database `test`
  "$PYTHON" - "$1" 2>/dev/null <<'PY'
import sys, psycopg
with psycopg.connect(f"postgresql://postgres@127.0.0.1:{sys.argv[1]}/postgres", connect_timeout=3, autocommit=True) as db:
    if not db.execute("select 1 from pg_database where datname = 'test'").fetchone():
        db.execute("create database test")
PY
}

redis_ready() (  # redis_ready PORT: a Redis server on 127.0.0.1:PORT answers PING
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 && [[ $reply == +PONG* ]]
) 2>/dev/null

start_private_postgresql() {
  local bindir user
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$bindir/initdb" ] || die "no PostgreSQL at 127.0.0.1:5432 and no server binaries (run scripts/install-test-deps.sh)"
  local as_user=()
  if [ "$(id -u)" -eq 0 ]; then  # initdb refuses to run as root
    user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
    as_user=(runuser -u "$user" --)
    mkdir "$TMP/pg" && chown "$user" "$TMP/pg"
  fi
  PG_PORT=$(free_port)
  "${as_user[@]}" "$bindir/initdb" -D "$TMP/pg" -U postgres -A trust -E UTF8 --no-sync >"$TMP/initdb.log" 2>&1 ||
    { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  PG_CTL=("${as_user[@]}" "$bindir/pg_ctl" -D "$TMP/pg")
  "${PG_CTL[@]}" -l "$TMP/pg/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PG_PORT -k $TMP/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$TMP/pg/server.log" >&2; die "PostgreSQL did not start"; }
  pg_ready "$PG_PORT" || die "private PostgreSQL at 127.0.0.1:$PG_PORT does not answer"
  say "PostgreSQL: started a private server ($bindir) at 127.0.0.1:$PG_PORT"
}

start_private_redis() {
  command -v redis-server >/dev/null || die "no Redis at 127.0.0.1:6379 and no redis-server (run scripts/install-test-deps.sh)"
  REDIS_PORT=$(free_port)
  REDIS_PIDFILE=$TMP/redis.pid
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
    --pidfile "$REDIS_PIDFILE" --dir "$TMP" --logfile "$TMP/redis.log" || die "redis-server did not start"
  for _ in $(seq 50); do redis_ready "$REDIS_PORT" && break; sleep 0.1; done
  redis_ready "$REDIS_PORT" || { cat "$TMP/redis.log" >&2; die "private Redis does not answer"; }
  say "Redis: started a private server at 127.0.0.1:$REDIS_PORT"
}

if pg_ready 5432; then
  PG_PORT=5432
  say "PostgreSQL: using the server at 127.0.0.1:5432"
else
  start_private_postgresql
fi
if redis_ready 6379; then
  REDIS_PORT=6379
  say "Redis: using the server at 127.0.0.1:6379 (database 15)"
else
  start_private_redis
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1  # the browser test uses Debian's chromium, never a download
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/15"
mkdir -p test-output

run_pytest() {  # run_pytest DATABASE_URL NAME PYTEST_ARGS...: prints which database, returns pytest's code
  local url=$1 name=$2
  shift 2
  say "=== pytest on $name (DATABASE_URL=$url) ==="
  DATABASE_URL=$url "$PYTHON" -m pytest --junitxml="test-output/$name.xml" "$@"
}

run_pytest "postgres://postgres@127.0.0.1:$PG_PORT/test" postgresql tests/ "$@"
pg_status=$?
run_pytest "sqlite:///$TMP/test.sqlite3" sqlite tests/ -m "not e2e" "$@"
sqlite_status=$?
[ $sqlite_status -eq 5 ] && sqlite_status=0  # nothing left to run without the e2e tests is fine

say "PostgreSQL run: $([ $pg_status -eq 0 ] && echo passed || echo "FAILED (pytest exit code $pg_status)")"
say "SQLite run:     $([ $sqlite_status -eq 0 ] && echo passed || echo "FAILED (pytest exit code $sqlite_status)")"
[ $pg_status -eq 0 ] && [ $sqlite_status -eq 0 ]
