-- Segments, their memberships and evaluation history; and the change feeds the query layer's
-- snapshot refreshes from: profiles by a global version, events by the order they were resolved.

CREATE SEQUENCE profile_versions;
ALTER TABLE profiles ALTER COLUMN version SET DEFAULT nextval('profile_versions');
UPDATE profiles SET version = nextval('profile_versions');
CREATE INDEX profiles_version ON profiles (version);

-- Assigned by the (single) resolver as it commits, so a reader that has seen N has seen all < N.
CREATE SEQUENCE event_resolutions;
ALTER TABLE events ADD COLUMN resolved_seq bigint;
UPDATE events SET resolved_seq = nextval('event_resolutions') WHERE resolved;
CREATE INDEX events_resolved_seq ON events (resolved_seq) WHERE resolved_seq IS NOT NULL;

CREATE TABLE segments (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL,
    description        text,
    definition         jsonb NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    last_evaluated_at  timestamptz
);

CREATE TABLE segment_members (
    segment_id  uuid NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    profile_id  uuid NOT NULL REFERENCES profiles (id),
    entered_at  timestamptz NOT NULL,
    PRIMARY KEY (segment_id, profile_id)
);
CREATE INDEX segment_members_profile ON segment_members (profile_id);

CREATE TABLE segment_runs (
    id            bigserial PRIMARY KEY,
    segment_id    uuid NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    evaluated_at  timestamptz NOT NULL,
    members       bigint NOT NULL,
    entered       bigint NOT NULL,
    exited        bigint NOT NULL,
    elapsed_ms    double precision NOT NULL
);
CREATE INDEX segment_runs_segment ON segment_runs (segment_id, evaluated_at);

-- Outbox of membership changes, for destinations (webhooks) to deliver.
CREATE TABLE segment_changes (
    id          bigserial PRIMARY KEY,
    segment_id  uuid NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    profile_id  uuid NOT NULL,
    change      text NOT NULL CHECK (change IN ('entered', 'exited')),
    at          timestamptz NOT NULL
);
