#!/usr/bin/env bash
# `kizuna bench lookup --rate 5000 --seconds 20`, plus where the machine's CPU went during 15 s of
# the measurement: the kizuna process (server and load generator), PostgreSQL (every backend),
# the whole machine, each per request; and how many lookups each committed statement carried.
#   bash bench/lookup-split.sh [path/to/kizuna]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-./target/release/kizuna}
PSQL=${PSQL:-/usr/lib/postgresql/15/bin/psql}
PG_HOST=${PG_HOST:-127.0.0.1}
RATE=5000 WINDOW=15
log=$(mktemp)
trap 'rm -f "$log"' EXIT
KIZUNA__LOG__LEVEL=warn "$BIN" bench lookup --rate $RATE --seconds 20 >"$log" 2>&1 &
bench=$!
until grep -q seeded "$log"; do sleep 0.2; kill -0 $bench 2>/dev/null || { cat "$log"; exit 1; }; done
sleep 3 # the 2 s warm-up
commits() { "$PSQL" -h "$PG_HOST" -U postgres -Atc "SELECT sum(xact_commit) FROM pg_stat_database WHERE datname LIKE 'kizuna_bench_lookup%'"; }
ticks() { local t=0 f; for p in "$@"; do read -r -a f <"/proc/$p/stat" 2>/dev/null && t=$((t + f[13] + f[14])); done; echo $t; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
pg=$(pgrep -d' ' postgres)
x0=$(commits) k0=$(ticks $bench) p0=$(ticks $pg) s0=$(busy)
sleep $WINDOW
x1=$(commits) k1=$(ticks $bench) p1=$(ticks $pg) s1=$(busy)
wait $bench
grep -E "requests/s$|latency" "$log"
hz=$(getconf CLK_TCK) n=$((RATE * WINDOW))
echo "per request: kizuna $(((k1 - k0) * 1000000 / hz / n)) core-µs, PostgreSQL $(((p1 - p0) * 1000000 / hz / n)), machine $(((s1 - s0) * 1000000 / hz / n)); lookups a commit $(awk "BEGIN {printf \"%.2f\", $n / ($x1 - $x0)}")"
