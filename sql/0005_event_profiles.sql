-- Resolution state moves out of the wide `events` rows into a narrow table written by ingest in
-- the same statement as the event. Resolving (and re-pointing events on a merge) then writes
-- ~60-byte rows instead of a new version of each ~1 KB event row and its indexes.
--   profile_id    the live profile the event belongs to (NULL until resolved, or when every
--                 identifier of the event was blocked)
--   resolved_seq  from `event_resolutions`, assigned as the single resolver commits: the
--                 snapshot follows it; NULL means the event waits for resolution
CREATE TABLE event_profiles (
    -- events.seq (no foreign key: its per-row check would tax every ingest; rows are only
    -- ever written beside their event and deleted with it)
    seq           bigint PRIMARY KEY,
    ts            timestamptz NOT NULL,
    profile_id    uuid,
    resolved_seq  bigint
);

INSERT INTO event_profiles (seq, ts, profile_id, resolved_seq)
SELECT seq, ts, profile_id, CASE WHEN resolved THEN coalesce(resolved_seq, nextval('event_resolutions')) END
FROM events;

CREATE INDEX event_profiles_pending ON event_profiles (seq) WHERE resolved_seq IS NULL;
CREATE INDEX event_profiles_timeline ON event_profiles (profile_id, ts DESC, seq DESC) WHERE profile_id IS NOT NULL;
CREATE INDEX event_profiles_resolved_seq ON event_profiles (resolved_seq) WHERE resolved_seq IS NOT NULL;

DROP INDEX events_unresolved;
DROP INDEX events_profile_timeline;
DROP INDEX events_resolved_seq;
ALTER TABLE events DROP COLUMN profile_id, DROP COLUMN resolved, DROP COLUMN resolved_seq;
