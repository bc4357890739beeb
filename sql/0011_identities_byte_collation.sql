-- Identifiers are opaque, already-normalized strings: they are only ever compared for equality,
-- and ordered (as a tie-break) by code point. Under a libc collation such as `C.UTF-8` or
-- `en_US.UTF-8`, every comparison in the `(kind, value)` key copies both strings to terminate them
-- and calls `strcoll`; under "C" it is one `memcmp`. The resolver probes and extends this key
-- a few thousand times a batch, and those comparisons were about a fifth of its PostgreSQL CPU
-- (BENCHMARKS.md, issue 3). Equality is byte equality either way, and "C" orders UTF-8 by code
-- point, so no answer changes. The primary key index is rebuilt; the rows are not rewritten.
ALTER TABLE identities
    ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN value TYPE text COLLATE "C";
