"""Export round trip: what Kizuna exports, read back by pyarrow and DuckDB, equals what its own
API says.

Env (run.sh sets them): KIZUNA_URL, KIZUNA_TOKEN (admin), KIZUNA_EXPORT_DIR (the server's
[exports] dir), WORK (a scratch folder). Sends profiles through the tracking API (names with
commas, quotes, newlines and emoji), evaluates a segment, exports profiles and the segment in
CSV, Parquet and NDJSON, and compares row counts, column types and values of known profiles.
"""

import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

URL, TOKEN = os.environ["KIZUNA_URL"], os.environ["KIZUNA_TOKEN"]
EXPORT_DIR, WORK = os.environ["KIZUNA_EXPORT_DIR"], os.environ["WORK"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"exports: FAIL {what}", file=sys.stderr)


def call(method, path, body=None, auth=None, raw=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", auth or f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = resp.read()
            return resp.status, resp.headers, payload if raw else json.loads(payload or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# The people. Names carry what breaks naive CSV: commas, quotes, newlines, emoji.
SPECIAL = {
    "ada": 'Ada, "the first"\nLovelace 🎉',
    "bob": "Bob; O'Brien, Jr.",
    "cyd": "Cyd\r\nMulti\nLine, \"quoted\" 🚀🇯🇵",
}
people = [
    {"userId": "ada", "traits": {"email": "ada@example.com", "name": SPECIAL["ada"], "plan": "pro", "age": 36, "vip": True, "ltv": 1234.5}},
    {"userId": "bob", "traits": {"email": "bob@example.com", "name": SPECIAL["bob"], "plan": "free", "age": 20, "vip": False}},
    {"userId": "cyd", "traits": {"email": "cyd@example.com", "name": SPECIAL["cyd"], "plan": "pro", "age": 51}},
]
for i in range(40):
    people.append({"userId": f"user-{i}", "traits": {"email": f"user{i}@example.com", "name": f"User {i}",
                                                     "plan": ["free", "plus", "pro"][i % 3], "age": 18 + i}})
batch = [dict(type="identify", timestamp=f"2026-01-{1 + n % 28:02d}T10:00:00Z", **p) for n, p in enumerate(people)]
batch += [{"type": "track", "userId": "ada", "event": "Order Completed", "properties": {"revenue": r},
           "timestamp": f"2026-02-0{d}T12:00:00Z"} for d, r in [(1, 10), (2, 32.5)]]

status, _, source = call("POST", "/v1/sources", {"name": "roundtrip", "kind": "server"})
assert status == 201, (status, source)
basic = "Basic " + base64.b64encode(f"{source['write_key']}:".encode()).decode()
status, _, body = call("POST", "/v1/batch", {"batch": batch}, auth=basic)
assert status == 200, (status, body)

# Identity resolution is asynchronous: wait until every person has a profile.
for _ in range(200):
    status, _, last = call("GET", "/v1/profiles/lookup?user_id=user-39")
    if status == 200:
        break
    time.sleep(0.1)
profiles = {}
for p in people:
    status, _, profile = call("GET", f"/v1/profiles/lookup?user_id={p['userId']}")
    assert status == 200, (p["userId"], status, profile)
    profiles[p["userId"]] = profile
by_id = {p["id"]: u for u, p in profiles.items()}

status, _, computed = call("POST", "/v1/computed-traits",
                           {"name": "revenue", "kind": "sum", "event": "Order Completed", "property": "revenue"})
assert status == 201, (status, computed)
status, _, segment = call("POST", "/v1/segments", {"name": "Pros", "definition": {"trait": "plan", "op": "eq", "value": "pro"}})
assert status == 201, (status, segment)
sid = segment["id"]
status, _, early = call("GET", f"/v1/segments/{sid}/export?format=csv", raw=True)
check(status == 409, f"a never-evaluated segment export answers 409 (got {status})")
status, _, run = call("POST", f"/v1/segments/{sid}/evaluate")
assert status == 200, (status, run)
members, cursor = {}, None
while True:
    status, _, page = call("GET", f"/v1/segments/{sid}/members?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
    assert status == 200, (status, page)
    for m in page["items"]:
        members[m["profile_id"]] = m["entered_at"]
    cursor = page["next_cursor"]
    if not cursor:
        break
expected_members = {profiles[p["userId"]]["id"] for p in people if p["traits"]["plan"] == "pro"}
check(set(members) == expected_members, "the API's segment members are the pro profiles")


def ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "ndjson": "application/x-ndjson"}


def download(path, fmt, name):
    status, headers, payload = call("GET", f"{path}?format={fmt}", raw=True)
    assert status == 200, (path, fmt, status, payload[:300])
    check(headers.get("Content-Type", "").startswith(CONTENT_TYPES[fmt]), f"{name}.{fmt}: Content-Type {headers.get('Content-Type')}")
    check(headers.get("Content-Disposition", "").startswith("attachment; filename="), f"{name}.{fmt}: Content-Disposition")
    file = os.path.join(WORK, f"{name}.{fmt}")
    with open(file, "wb") as f:
        f.write(payload)
    return file


def read_pyarrow(file, fmt):
    if fmt == "csv":
        return pacsv.read_csv(file)
    if fmt == "parquet":
        return pq.read_table(file)
    return pajson.read_json(file)


def read_duckdb(file, fmt):
    con = duckdb.connect()
    reader = {"csv": "read_csv_auto", "parquet": "read_parquet", "ndjson": "read_ndjson_auto"}[fmt]
    rel = con.sql(f"SELECT * FROM {reader}('{file}')")
    types = dict(zip(rel.columns, [str(t) for t in rel.types]))
    rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
    return types, rows


def same_time(value, api_text):
    if isinstance(value, str):
        value = ts(value)
    if value is not None and value.tzinfo is None:  # pyarrow's JSON reader drops the Z
        value = value.replace(tzinfo=timezone.utc)
    return value is not None and value == ts(api_text)


def check_rows(label, rows, expected_ids, segment):
    for r in rows:  # DuckDB's JSON reader types ids as UUID
        r["profile_id"] = str(r["profile_id"])
    ids = [r["profile_id"] for r in rows]
    check(len(rows) == len(expected_ids), f"{label}: {len(rows)} rows, the API has {len(expected_ids)}")
    check(set(ids) == set(expected_ids), f"{label}: the profile ids are the API's")
    for r in rows:
        user = by_id.get(r["profile_id"])
        if user not in ("ada", "bob", "cyd") and r["profile_id"] != profiles["user-7"]["id"]:
            continue
        api = profiles[user]
        check(r["user_id"] == user, f"{label}: {user}'s user_id")
        check(r["email"] == api["traits"]["email"], f"{label}: {user}'s email")
        check(r["trait_name"] == api["traits"]["name"], f"{label}: {user}'s name {r['trait_name']!r} == {api['traits']['name']!r}")
        check(r["trait_plan"] == api["traits"]["plan"], f"{label}: {user}'s plan")
        check(float(r["trait_age"]) == float(api["traits"]["age"]), f"{label}: {user}'s age")
        check(int(r["event_count"]) == api["event_count"], f"{label}: {user}'s event_count")
        check(same_time(r["first_seen"], api["first_seen"]), f"{label}: {user}'s first_seen {r['first_seen']!r} == {api['first_seen']}")
        check(same_time(r["last_seen"], api["last_seen"]), f"{label}: {user}'s last_seen")
        check(json.loads(r["traits"]) == api["traits"], f"{label}: {user}'s traits JSON")
        if user == "ada":
            check(float(r["computed_revenue"]) == 42.5, f"{label}: ada's computed revenue")
        if segment:
            check(same_time(r["entered_at"], members[r["profile_id"]]), f"{label}: {user}'s entered_at")


all_ids = [p["id"] for p in profiles.values()]
for fmt in ["csv", "parquet", "ndjson"]:
    for name, path, expected, segment in [
        ("profiles", "/v1/exports/profiles", all_ids, False),
        ("segment", f"/v1/segments/{sid}/export", list(members), True),
    ]:
        file = download(path, fmt, name)
        table = read_pyarrow(file, fmt)
        check_rows(f"pyarrow {name}.{fmt}", table.to_pylist(), expected, segment)
        types, rows = read_duckdb(file, fmt)
        check_rows(f"duckdb {name}.{fmt}", rows, expected, segment)
        # Typed columns: numbers as numbers, timestamps as timestamps.
        schema = table.schema
        check(pa.types.is_floating(schema.field("trait_age").type), f"pyarrow {name}.{fmt}: trait_age is {schema.field('trait_age').type}")
        check(pa.types.is_integer(schema.field("event_count").type), f"pyarrow {name}.{fmt}: event_count is {schema.field('event_count').type}")
        check(types["trait_age"] == "DOUBLE", f"duckdb {name}.{fmt}: trait_age is {types['trait_age']}")
        check(types["event_count"] == "BIGINT", f"duckdb {name}.{fmt}: event_count is {types['event_count']}")
        check(types["trait_vip"] == "BOOLEAN", f"duckdb {name}.{fmt}: trait_vip is {types['trait_vip']}")
        if fmt != "ndjson":  # JSON has no timestamp type; its readers see ISO 8601 text
            check(pa.types.is_timestamp(schema.field("first_seen").type), f"pyarrow {name}.{fmt}: first_seen is {schema.field('first_seen').type}")
            check(types["first_seen"].startswith("TIMESTAMP"), f"duckdb {name}.{fmt}: first_seen is {types['first_seen']}")
        if fmt == "parquet":
            check(schema.field("first_seen").type == pa.timestamp("us", tz="UTC"), f"parquet first_seen is {schema.field('first_seen').type}")
            check(types["first_seen"] == "TIMESTAMP WITH TIME ZONE", f"duckdb parquet first_seen is {types['first_seen']}")
            if segment:
                check(schema.field("entered_at").type == pa.timestamp("us", tz="UTC"), "parquet entered_at is a UTC timestamp")

# A file export of the segment, written by the worker with its manifest.
status, _, accepted = call("POST", "/v1/exports", {"what": "segment", "format": "parquet", "segment_id": sid})
assert status == 202, (status, accepted)
for _ in range(200):
    status, _, job = call("GET", f"/v1/exports/{accepted['id']}")
    if job["status"] in ("done", "failed"):
        break
    time.sleep(0.1)
check(job["status"] == "done", f"the file export finished: {job}")
if job["status"] == "done":
    data_path = os.path.join(EXPORT_DIR, job["file"])
    with open(data_path, "rb") as f:
        data = f.read()
    with open(os.path.join(EXPORT_DIR, accepted["id"], "manifest.json")) as f:
        manifest = json.load(f)
    check(manifest["sha256"] == hashlib.sha256(data).hexdigest(), "the manifest's sha256 is the file's")
    check(manifest["rows"] == len(members) == pq.read_metadata(data_path).num_rows, "the manifest's row count is the file's and the API's")
    check(manifest["segment"]["id"] == sid, "the manifest names the segment")
    rows = duckdb.sql(f"SELECT profile_id FROM read_parquet('{data_path}')").fetchall()
    check({str(r[0]) for r in rows} == set(members), "DuckDB reads the segment's members from the file export")

if failures:
    print(f"exports: {len(failures)} checks failed", file=sys.stderr)
    sys.exit(1)
print(f"exports: round trip ok ({len(all_ids)} profiles, {len(members)} members, csv/parquet/ndjson via pyarrow and DuckDB, file export)")
