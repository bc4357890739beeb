#!/usr/bin/env bash
# Real-SDK compatibility checks: starts Kizuna on a fresh database and a free port, then runs
# Segment's Python SDK and RudderStack's Node SDK against it. Run from the repo root:
#   KIZUNA_BIN=./target/debug/kizuna bash tests/compat/run.sh
# Needs psql, python3 (venv), node and npm, and PostgreSQL at 127.0.0.1:5432 (user postgres).
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${KIZUNA_BIN:-./target/debug/kizuna}
PG=postgres://postgres@127.0.0.1:5432
DB=kizuna_compat_$$_$(date +%s)
TOKEN=compat-$RANDOM$RANDOM
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
LOG=target/compat-server.log
SERVER=

cleanup() {
  if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; fi
  psql "$PG/postgres" -Xq -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
}
trap cleanup EXIT
trap "exit 1" INT TERM
die() { echo "compat: $*" >&2; echo "compat: 0 passed, 1 failed"; exit 1; }

[ -x "$BIN" ] || die "no server binary at $BIN (cargo build first)"
mkdir -p target
echo "compat: installing SDKs"
[ -x target/compat-venv/bin/python ] || python3 -m venv target/compat-venv || die "venv failed"
target/compat-venv/bin/pip install -q --disable-pip-version-check segment-analytics-python==2.4.0 \
  || die "pip install failed"
# `npm install`, not `npm ci`: with omit-lockfile-registry-resolved set, npm 11 leaves other
# platforms' optional packages out of the lock file and `npm ci` then refuses it.
(cd tests/compat && npm install --no-audit --no-fund --loglevel=error) || die "npm install failed"

echo "compat: starting $BIN on $URL (database $DB, log $LOG)"
KIZUNA__AUTH__ADMIN_TOKEN=$TOKEN KIZUNA__SERVER__BIND=127.0.0.1:$PORT DATABASE_URL=$PG/$DB \
  "$BIN" serve >"$LOG" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
  curl -fs "$URL/readyz" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; SERVER=; die "server exited"; }
  sleep 0.5
done
curl -fs "$URL/readyz" >/dev/null || { cat "$LOG" >&2; die "server not ready after 60 s"; }

passed=0 failed=0
check() { # name, command...
  local name=$1; shift
  local src key id
  src=$(curl -fsS -X POST "$URL/v1/sources" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "{\"name\":\"compat $name\",\"kind\":\"server\"}") \
    || { echo "compat: FAIL $name: creating a source failed"; failed=$((failed + 1)); return; }
  id=$(jq -r .id <<<"$src"); key=$(jq -r .write_key <<<"$src")
  if KIZUNA_URL=$URL KIZUNA_WRITE_KEY=$key KIZUNA_SOURCE_ID=$id KIZUNA_DATABASE_URL=$PG/$DB \
    timeout 120 "$@"; then
    passed=$((passed + 1))
  else
    echo "compat: FAIL $name (server log: $LOG)"; failed=$((failed + 1))
  fi
}
check segment-python target/compat-venv/bin/python tests/compat/segment_python.py
check rudder-node node tests/compat/rudder_node.mjs

echo "compat: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
