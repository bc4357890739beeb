-- Reads see what has been acknowledged (issue 3, freshness). The resolver works behind ingest,
-- so a burst leaves a backlog; a profile read that would miss a message still in it asks the
-- resolver to take that message next, and waits for it.
--
-- `pending_identifiers` is how a read finds such messages: ingest writes each message's
-- normalized identifiers here in the statement that stores it, and the resolver deletes them in
-- the transaction that resolves it. It is derived data, so it is UNLOGGED (no WAL): after a crash
-- PostgreSQL empties it, and until the resolver has caught up with the messages stored before the
-- crash, reads do not wait for them (nothing is lost; they are resolved in their turn).
CREATE UNLOGGED TABLE pending_identifiers (
    kind   text COLLATE "C" NOT NULL,
    value  text COLLATE "C" NOT NULL,
    seq    bigint NOT NULL
);
CREATE INDEX pending_identifiers_key ON pending_identifiers (kind, value);
CREATE INDEX pending_identifiers_seq ON pending_identifiers (seq);

-- Messages a read is waiting for: the resolver takes these before the oldest pending ones.
CREATE UNLOGGED TABLE resolution_requests (
    seq           bigint PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
