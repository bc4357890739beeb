-- Reads see what has been acknowledged (issue 3, freshness). The resolver works behind ingest,
-- so a burst leaves a backlog; a profile read that would miss a message still in it asks the
-- resolver to take that message next, and waits for it (src/identity/on_read.rs).
--
-- `pending_identifiers` is how a read finds such messages: ingest writes a key for each of a
-- message's normalized identifiers in the statement that stores it, and the resolver deletes
-- them in the transaction that resolves it. The key is a 64-bit hash of the identifier
-- (`hashtextextended(value, hashtext(kind))`): an integer index costs ingest far less than a
-- text one, and the table holds no personal data. Two identifiers sharing a key would only have
-- a read resolve one more message early, which changes nothing it shows.
--
-- It is derived data, so it is UNLOGGED (no WAL): after a crash PostgreSQL empties it, and until
-- the resolver has caught up with the messages stored before the crash, reads do not wait for
-- them (nothing is lost; they are resolved in their turn).
--
-- A read probes the key index with a handful of keys. The table swings from empty to a burst's
-- backlog within seconds, faster than statistics follow, and a plan cached while it looked empty
-- scanned all of it on every read under the next burst. So the planner is told what holds at
-- any size: a key matches about two rows (`n_distinct`), and an emptied table keeps its pages
-- (`vacuum_truncate`), so it never looks smaller than the last backlog it held.
CREATE UNLOGGED TABLE pending_identifiers (
    key  bigint NOT NULL,
    seq  bigint NOT NULL
) WITH (vacuum_truncate = false);
ALTER TABLE pending_identifiers ALTER COLUMN key SET (n_distinct = -0.5);
CREATE INDEX pending_identifiers_key ON pending_identifiers (key);
-- For the resolver to delete a batch's rows. (Rows arrive in about `seq` order, but a BRIN index
-- cannot serve `seq = ANY(...)` before PostgreSQL 16: the deletes scanned the whole table.)
CREATE INDEX pending_identifiers_seq ON pending_identifiers (seq);

-- Messages a read is waiting for: the resolver adds these to its next batch.
CREATE UNLOGGED TABLE resolution_requests (
    seq           bigint PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
