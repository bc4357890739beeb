-- File exports (API.md §5): one row per requested or scheduled export, with what the worker
-- reported. Files live under the configured export directory in a folder named by the id.

CREATE TABLE exports (
    id           uuid PRIMARY KEY,
    what         text NOT NULL CHECK (what IN ('profiles', 'events', 'segment')),
    format       text NOT NULL CHECK (format IN ('csv', 'parquet', 'ndjson')),
    segment_id   uuid,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'done', 'failed')),
    reason       text,
    file         text,
    rows         bigint,
    bytes        bigint,
    sha256       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX exports_unfinished ON exports (created_at) WHERE status IN ('pending', 'running');
