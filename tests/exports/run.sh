#!/usr/bin/env bash
# Export round trip: starts the built Kizuna on a fresh database and a free port, sends profiles
# through the tracking API, exports them (and a segment) as CSV, Parquet and NDJSON, and reads
# them back with pyarrow and DuckDB (tests/exports/roundtrip.py). Run from the repo root:
#   KIZUNA_BIN=./target/debug/kizuna bash tests/exports/run.sh
# Needs psql, curl, python3 (venv, cached under target/) and PostgreSQL at 127.0.0.1:5432.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${KIZUNA_BIN:-./target/debug/kizuna}
PG=postgres://postgres@127.0.0.1:5432
DB=kizuna_exports_$$_$(date +%s)
TOKEN=exports-$RANDOM$RANDOM
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kizuna-exports.XXXXXX")
LOG=target/exports-server.log
SERVER=

cleanup() {
  if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; fi
  psql "$PG/postgres" -Xq -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 1" INT TERM
die() { echo "exports: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "no server binary at $BIN (cargo build first)"
mkdir -p target
VENV=target/exports-venv
[ -x $VENV/bin/python ] || python3 -m venv $VENV || die "venv failed"
$VENV/bin/python -c 'import pyarrow, duckdb' 2>/dev/null \
  || $VENV/bin/pip install -q --disable-pip-version-check pyarrow==26.0.1 duckdb==2.0.1 \
  || die "pip install failed"

echo "exports: starting $BIN on $URL (database $DB, log $LOG)"
KIZUNA__AUTH__ADMIN_TOKEN=$TOKEN KIZUNA__SERVER__BIND=127.0.0.1:$PORT DATABASE_URL=$PG/$DB \
  KIZUNA__EXPORTS__DIR=$WORK/exports KIZUNA__QUERY__SCHEDULE_EVERY_SECS=0 \
  "$BIN" serve >"$LOG" 2>&1 &
SERVER=$!
for _ in $(seq 120); do
  curl -fs "$URL/readyz" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; SERVER=; die "server exited"; }
  sleep 0.5
done
curl -fs "$URL/readyz" >/dev/null || { cat "$LOG" >&2; die "server not ready after 60 s"; }

KIZUNA_URL=$URL KIZUNA_TOKEN=$TOKEN KIZUNA_EXPORT_DIR=$WORK/exports WORK=$WORK \
  timeout 300 $VENV/bin/python tests/exports/roundtrip.py || die "round trip failed (server log: $LOG)"
