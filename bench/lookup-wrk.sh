#!/usr/bin/env bash
# GET /v1/profiles/lookup at 1,000,000 profiles, driven by wrk (apt-get install wrk): seeds the
# profiles with `kizuna bench lookup --keep`, serves that database, runs wrk, cleans up.
#   bash bench/lookup-wrk.sh [connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KIZUNA_BIN:-./target/release/kizuna}
PG=${KIZUNA_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${1:-16}
SECONDS_=${2:-15}
db=$(KIZUNA__LOG__LEVEL=warn "$BIN" bench lookup --seconds 1 --keep --server "$PG" 2>&1 | sed -n 's/^kept database //p')
[ -n "$db" ] || { echo "seeding failed" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KIZUNA_TOKEN=wrk-$RANDOM$RANDOM
KIZUNA__AUTH__ADMIN_TOKEN=$KIZUNA_TOKEN KIZUNA__SERVER__BIND=127.0.0.1:$port KIZUNA__LOG__LEVEL=warn \
  KIZUNA__QUERY__SCHEDULE_EVERY_SECS=0 DATABASE_URL=$PG/$db "$BIN" serve &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; psql "$PG/postgres" -Xqc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
wrk -t1 -c"$CONNECTIONS" -d2s -s bench/lookup.lua "http://127.0.0.1:$port" >/dev/null  # warm-up
wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_}s" --latency -s bench/lookup.lua "http://127.0.0.1:$port"
