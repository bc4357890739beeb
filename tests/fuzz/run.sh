#!/usr/bin/env bash
# Property-based fuzzing of every operation the served /openapi.json lists (schemathesis): the
# debug `kizuna` on a fresh database, an admin token and a write key, then a bounded run of
# generated requests. Any 5xx (or a response that breaks its documented schema) fails the run.
# Nothing here lists endpoints: new ones are fuzzed as soon as the document has them.
#
#   bash tests/fuzz/run.sh            # FUZZ_SECONDS=150 by default
#   FUZZ_SEED=1 FUZZ_ARGS="--include-path /v1/track --report har" bash tests/fuzz/run.sh
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), psql, curl, python3 with venv, PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-150}
venv=${KIZUNA_FUZZ_VENV:-$HOME/.cache/kizuna-fuzz-venv}
schemathesis_version=4.32.5
pg=${TEST_PG_ADDR:-127.0.0.1:5432}
work=target/fuzz
rm -rf "$work/report" "$work/exports"
mkdir -p "$work"
work=$(cd "$work" && pwd)

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "fuzz: installing schemathesis $schemathesis_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

cargo build --quiet --bin kizuna
bin=$(pwd)/target/debug/kizuna

db="kizuna_fuzz_$(date +%s)_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="fuzz-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
base="http://127.0.0.1:$port"
pid=""

drop_db() {
  psql -h "${pg%:*}" -p "${pg##*:}" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
}

cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  drop_db
}
trap cleanup EXIT

DATABASE_URL="postgres://postgres@$pg/$db" \
KIZUNA__SERVER__BIND="127.0.0.1:$port" \
KIZUNA__AUTH__ADMIN_TOKEN="$token" \
KIZUNA__QUERY__SCHEDULE_EVERY_SECS=0 \
KIZUNA__EXPORTS__DIR="$work/exports" \
KIZUNA__LOG__LEVEL=warn \
  "$bin" serve >"$work/server.log" 2>&1 &
pid=$!

for _ in $(seq 1 120); do
  if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "fuzz: kizuna exited; see $work/server.log" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "$base/readyz" >/dev/null

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
admin() { curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }

# Something to aim at: a write key (so the tracking API is fuzzed past authentication), and one
# of each kind of object, whose ids are offered to every `{id}` path parameter half the time.
write_key=$(admin -d '{"name":"fuzz","kind":"server"}' "$base/v1/sources" | json_field write_key)
# (A second source is the one offered to `{id}`: fuzzing may delete it, which must not stop the
# tracking API's key.)
source_id=$(admin -d '{"name":"fuzz target","kind":"web"}' "$base/v1/sources" | json_field id)
key_id=$(admin -d '{"name":"fuzz","scopes":["profiles:read"]}' "$base/v1/api-keys" | json_field id)
segment_id=$(admin -d '{"name":"fuzz","definition":{"identity":"email","op":"exists"}}' \
  "$base/v1/segments" | json_field id)
curl -fsS -u "$write_key:" -H 'content-type: application/json' \
  -d '{"userId":"fuzz-user","traits":{"email":"fuzz@example.com","plan":"pro"}}' \
  "$base/v1/identify" >/dev/null
# Seeds for endpoints that may come and go: a failure here only means fewer seeded ids.
export_id=$({ admin -d '{"what":"profiles","format":"csv"}' "$base/v1/exports" | json_field id; } 2>/dev/null) || true
profile_id=""
for _ in $(seq 1 50); do
  profile_id=$({ admin "$base/v1/profiles/lookup?user_id=fuzz-user" | json_field id; } 2>/dev/null) && break
  sleep 0.2
done

cat >"$work/schemathesis.toml" <<TOML
# Credentials go by the security scheme each operation declares; \${…} is read from the
# environment by schemathesis.
[auth.openapi.bearer]
bearer = "\${KIZUNA_FUZZ_TOKEN}"

[auth.openapi.write_key]
username = "\${KIZUNA_FUZZ_WRITE_KEY}"
password = ""

[dictionaries.ids]
values = ["$source_id", "$key_id", "$segment_id", "$profile_id", "$export_id", "../../etc/passwd", "%2e%2e%2f"]

[parameters]
"path.id" = { dictionary = "ids", probability = 0.5 }
TOML

echo "fuzz: schemathesis over $base/openapi.json for ${seconds} s"
status=0
(
  cd "$work"
  KIZUNA_FUZZ_TOKEN="$token" KIZUNA_FUZZ_WRITE_KEY="$write_key" \
    "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
      --checks not_a_server_error,response_schema_conformance \
      --max-time "$seconds" \
      --workers 2 \
      --request-timeout 20 \
      --report junit --report-dir "$work/report" \
      --seed "${FUZZ_SEED:-$RANDOM}" \
      ${FUZZ_ARGS:-}
) || status=$?

if grep -qi "panicked" "$work/server.log"; then
  echo "fuzz: the server log shows a panic:" >&2
  grep -i -A3 "panicked" "$work/server.log" | head -20 >&2
  status=1
fi
if ! kill -0 "$pid" 2>/dev/null; then
  echo "fuzz: kizuna died during the run" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "fuzz: no server errors" || echo "fuzz: FAILED (server log: $work/server.log)" >&2
exit "$status"
