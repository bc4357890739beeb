-- The resolver writes every identity in the same transaction as the profile it points at, and it
-- is the only writer (one per database, elected by an advisory lock); erasure deletes a profile's
-- identities before the profile, and sources are never deleted. So the two foreign keys of
-- `identities` guard nothing the code does not already guarantee, while each costs an index
-- probe and a row lock on the referenced profile or source for every identity inserted — about
-- half of the resolver's write time under a burst of new people (BENCHMARKS.md, issue 3).
ALTER TABLE identities
    DROP CONSTRAINT identities_profile_id_fkey,
    DROP CONSTRAINT identities_source_id_fkey;
