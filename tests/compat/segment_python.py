"""Segment's Python SDK (segment-analytics-python) against a running Kizuna.

Env: KIZUNA_URL, KIZUNA_WRITE_KEY, KIZUNA_SOURCE_ID, KIZUNA_DATABASE_URL (run.sh sets them).
Sends one call of each type, flushes, then checks the rows stored in `events`.
"""

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

from segment.analytics import Client

URL, KEY = os.environ["KIZUNA_URL"], os.environ["KIZUNA_WRITE_KEY"]
SOURCE, DB = os.environ["KIZUNA_SOURCE_ID"], os.environ["KIZUNA_DATABASE_URL"]
run = uuid.uuid4().hex[:8]
user, anon, group, prev = f"py-user-{run}", f"py-anon-{run}", f"py-org-{run}", f"py-prev-{run}"
ts = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)

errors = []
client = Client(KEY, host=URL, gzip=True, max_retries=1,
                on_error=lambda e, batch: errors.append(f"SDK upload failed: {e!r}"))
client.identify(user, {"email": f"{user}@example.com", "plan": "pro", "seats": 3}, anonymous_id=anon)
client.track(user, "Order Completed", {"order_id": "o-1", "revenue": 42.5, "items": ["a", "b"]},
             timestamp=ts)
client.page(user, "Docs", "Getting Started", {"path": "/docs/start"})
client.screen(anonymous_id=anon, category="Onboarding", name="Welcome", properties={"step": 1})
client.group(user, group, {"name": "Acme", "employees": 50})
client.alias(prev, user)
client.flush()  # blocks until the queue is sent (or given up on)
client.join()

sql = ("SELECT coalesce(json_agg(to_jsonb(e) || jsonb_build_object('ts_epoch', extract(epoch FROM e.ts))"
       f" ORDER BY seq), '[]') FROM events e WHERE user_id = '{user}' OR anonymous_id = '{anon}'")
out = subprocess.run(["psql", DB, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                     check=True, capture_output=True, text=True).stdout
rows = json.loads(out)
by_type = {r["type"]: r for r in rows}


def check(what, got, want):
    if got != want:
        errors.append(f"{what}: got {got!r}, want {want!r}")


check("row count", len(rows), 6)
check("types", sorted(by_type), sorted(["identify", "track", "page", "screen", "group", "alias"]))
for r in rows:
    check(f"{r['type']} source_id", r["source_id"], SOURCE)
    check(f"{r['type']} context.library.name", (r["context"] or {}).get("library", {}).get("name"),
          "analytics-python")
    if not r["message_id"]:
        errors.append(f"{r['type']}: empty message_id")

e = by_type.get("identify", {})
check("identify user_id", e.get("user_id"), user)
check("identify anonymous_id", e.get("anonymous_id"), anon)
check("identify traits", e.get("traits"), {"email": f"{user}@example.com", "plan": "pro", "seats": 3})
e = by_type.get("track", {})
check("track user_id", e.get("user_id"), user)
check("track event", e.get("event"), "Order Completed")
check("track properties", e.get("properties"), {"order_id": "o-1", "revenue": 42.5, "items": ["a", "b"]})
check("track ts (= timestamp)", e.get("ts_epoch"), ts.timestamp())
e = by_type.get("page", {})
check("page name", e.get("name"), "Getting Started")
check("page properties.path", (e.get("properties") or {}).get("path"), "/docs/start")
e = by_type.get("screen", {})
check("screen anonymous_id", e.get("anonymous_id"), anon)
check("screen user_id", e.get("user_id"), None)
check("screen name", e.get("name"), "Welcome")
check("screen properties.step", (e.get("properties") or {}).get("step"), 1)
e = by_type.get("group", {})
check("group group_id", e.get("group_id"), group)
check("group traits", e.get("traits"), {"name": "Acme", "employees": 50})
e = by_type.get("alias", {})
check("alias user_id", e.get("user_id"), user)
check("alias previous_id", e.get("previous_id"), prev)

for err in errors:
    print(f"segment_python: FAIL {err}", file=sys.stderr)
print(f"segment_python: {'FAILED' if errors else 'ok'} ({len(rows)} rows checked)")
sys.exit(1 if errors else 0)
