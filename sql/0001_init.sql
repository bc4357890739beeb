-- Sources, API keys and the events table: the tracking API's system of record.

CREATE TABLE sources (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('web','mobile','server','support','email','pos','social','crm','other')),
    -- sha256 of the write key; the key itself is shown once and never stored.
    write_key_hash  bytea NOT NULL UNIQUE,
    -- the first characters of the key, so people can tell keys apart in lists.
    write_key_hint  text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- deleting a source keeps its events' provenance: the row stays, its key stops working.
    deleted_at      timestamptz
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    token_hint  text NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every accepted message. `profile_id` is attached by identity resolution after the insert;
-- `events_unresolved` is that stage's work queue.
CREATE TABLE events (
    seq                 bigserial PRIMARY KEY,
    source_id           uuid NOT NULL REFERENCES sources (id),
    message_id          text NOT NULL,
    type                text NOT NULL CHECK (type IN ('identify','track','page','screen','group','alias')),
    event               text,          -- track: the event name
    name                text,          -- page / screen: the name
    user_id             text,
    anonymous_id        text,
    group_id            text,
    previous_id         text,
    profile_id          uuid,
    ts                  timestamptz NOT NULL,   -- event time (timestamp, skew-corrected originalTimestamp, or received_at)
    original_timestamp  timestamptz,
    sent_at             timestamptz,
    received_at         timestamptz NOT NULL,
    properties          jsonb,
    traits              jsonb,
    context             jsonb,
    integrations        jsonb,
    -- other top-level fields (channel, _metadata, version, …) kept verbatim
    extra               jsonb,
    UNIQUE (source_id, message_id)
);

CREATE INDEX events_unresolved ON events (seq) WHERE profile_id IS NULL;
