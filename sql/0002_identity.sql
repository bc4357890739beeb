-- Identity resolution: unified profiles, the identifiers that point at them, and merge lineage.

CREATE TABLE profiles (
    id           uuid PRIMARY KEY,
    traits       jsonb NOT NULL DEFAULT '{}',
    -- per trait: {"ts": event time, "source": source id, "seq": event seq, "removed": bool}
    trait_meta   jsonb NOT NULL DEFAULT '{}',
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    event_count  bigint NOT NULL DEFAULT 0,
    -- the surviving profile when this one was merged away (always the final survivor)
    merged_into  uuid REFERENCES profiles (id),
    -- bumped on every change, for incremental readers (the query layer's snapshot)
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profiles_merged_into ON profiles (merged_into) WHERE merged_into IS NOT NULL;

-- (kind, value) → the one live profile it identifies. Values are normalized.
CREATE TABLE identities (
    kind        text NOT NULL,
    value       text NOT NULL,
    profile_id  uuid NOT NULL REFERENCES profiles (id),
    source_id   uuid REFERENCES sources (id),
    first_seen  timestamptz NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE INDEX identities_profile ON identities (profile_id);

CREATE TABLE profile_merges (
    id              bigserial PRIMARY KEY,
    winner          uuid NOT NULL REFERENCES profiles (id),
    loser           uuid NOT NULL REFERENCES profiles (id),
    identity_kind   text NOT NULL,
    identity_value  text NOT NULL,
    event_seq       bigint NOT NULL,
    merged_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profile_merges_winner ON profile_merges (winner);

-- The resolver's work queue is the events not yet resolved. An event whose identifiers are all
-- blocked is resolved with no profile.
ALTER TABLE events ADD COLUMN resolved boolean NOT NULL DEFAULT false;
DROP INDEX events_unresolved;
CREATE INDEX events_unresolved ON events (seq) WHERE NOT resolved;
CREATE INDEX events_profile_timeline ON events (profile_id, ts DESC, seq DESC) WHERE profile_id IS NOT NULL;
