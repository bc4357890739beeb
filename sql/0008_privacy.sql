-- Privacy: the suppression list of erased identifiers, and the epoch that tells caches (ingest's
-- suppression set, the query layer's snapshot) that an erasure or unsuppression happened.

-- One row per suppressed identifier. `value_hash` is sha256 of "kind:normalized value": ingest
-- can still recognize the identifier, but the list itself holds no personal data.
CREATE TABLE suppressions (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL,
    value_hash  bytea NOT NULL UNIQUE,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Bumped by every erasure and unsuppression (one row, no ids: the feed must not name the erased).
CREATE TABLE privacy_epoch (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    epoch  bigint NOT NULL
);
INSERT INTO privacy_epoch (one, epoch) VALUES (true, 0);
