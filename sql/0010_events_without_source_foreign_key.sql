-- Ingest authenticates the source (by its write key) before it stores a single event, and sources
-- are never deleted (deleting one only sets `deleted_at` and stops its key), so the foreign key
-- of `events.source_id` checks nothing ingest has not already established. It cost a trigger
-- per stored event that probes `sources` and takes a share lock on the one row every event of
-- a source points at: about a sixth of PostgreSQL's ingest CPU under the ingest benchmark
-- (BENCHMARKS.md, issue 3).
ALTER TABLE events DROP CONSTRAINT events_source_id_fkey;
