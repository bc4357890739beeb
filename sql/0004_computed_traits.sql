-- Computed traits: per-profile aggregates over events, declared in config or over the API, and
-- their latest values as the profile API shows them.

CREATE TABLE computed_traits (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    -- 'config' (declared in config/, read-only over the API) or 'api'
    origin      text NOT NULL DEFAULT 'api',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profile_computed (
    profile_id   uuid PRIMARY KEY REFERENCES profiles (id) ON DELETE CASCADE,
    computed     jsonb NOT NULL,
    computed_at  timestamptz NOT NULL
);
