//! The identity stage's tables: `profiles` (written here), `identities`, `profile_merges`, and
//! `event_profiles` (each event's profile and resolution order). Every function runs inside the resolver's
//! transaction, one statement per batch of rows.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

/// An event waiting for resolution, with just what resolution reads.
pub struct PendingEvent {
    pub seq: i64,
    pub source_id: Uuid,
    pub kind: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub previous_id: Option<String>,
    pub ts: DateTime<Utc>,
    /// When ingest received it (the clock of the instance that did).
    pub received_at: DateTime<Utc>,
    pub traits: Option<Value>,
    pub context_traits: Option<Value>,
    pub external_ids: Option<Value>,
}

impl PendingEvent {
    /// The event's identifier fields, with an alias's `previousId` read as `previous_kind`.
    pub fn ids<'a>(&'a self, previous_kind: &'a str) -> super::MessageIds<'a> {
        super::MessageIds {
            user_id: self.user_id.as_deref(),
            anonymous_id: self.anonymous_id.as_deref(),
            previous_id: self.previous_id.as_deref(),
            previous_kind,
            traits: self.traits.as_ref().and_then(Value::as_object),
            context_traits: self.context_traits.as_ref().and_then(Value::as_object),
            external_ids: self.external_ids.as_ref(),
        }
    }
}

/// What resolution reads of an event, for `pending_event`.
const PENDING_FIELDS: &str =
    "e.seq, e.source_id, e.type, e.user_id, e.anonymous_id, e.previous_id, e.ts,
    CASE WHEN e.type = 'identify' THEN e.traits END, e.context->'traits', e.context->'externalIds',
    e.received_at";

fn pending_event(r: &tokio_postgres::Row) -> PendingEvent {
    PendingEvent {
        seq: r.get(0),
        source_id: r.get(1),
        kind: r.get(2),
        user_id: r.get(3),
        anonymous_id: r.get(4),
        previous_id: r.get(5),
        ts: r.get(6),
        traits: crate::db::lenient_json(r, 7),
        context_traits: crate::db::lenient_json(r, 8),
        external_ids: crate::db::lenient_json(r, 9),
        received_at: r.get(10),
    }
}

/// The first `limit` events waiting for resolution, but for `skip` (those of a batch still being
/// written).
pub async fn pending_events(
    tx: &impl GenericClient,
    limit: i64,
    skip: &[i64],
) -> Result<Vec<PendingEvent>, tokio_postgres::Error> {
    static OLDEST: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {PENDING_FIELDS}
             FROM (SELECT seq FROM event_profiles WHERE resolved_seq IS NULL AND seq <> ALL($2)
                   ORDER BY seq LIMIT $1) AS p
             JOIN events e ON e.seq = p.seq
             ORDER BY e.seq"
        )
    });
    let rows = tx
        .query(&tx.prepare_cached(&OLDEST).await?, &[&limit, &skip])
        .await?;
    Ok(rows.iter().map(pending_event).collect())
}

/// Those of the events `seqs` that still wait for resolution.
pub async fn pending_among(
    tx: &impl GenericClient,
    seqs: &[i64],
) -> Result<Vec<PendingEvent>, tokio_postgres::Error> {
    static AMONG: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {PENDING_FIELDS}
             FROM event_profiles p JOIN events e ON e.seq = p.seq
             WHERE p.seq = ANY($1) AND p.resolved_seq IS NULL"
        )
    });
    let rows = tx
        .query(&tx.prepare_cached(&AMONG).await?, &[&seqs])
        .await?;
    Ok(rows.iter().map(pending_event).collect())
}

/// Takes the events reads are waiting for (`resolution_requests`); the requests come back if the
/// transaction does not commit.
pub async fn take_requests(tx: &impl GenericClient) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &tx.prepare_cached("DELETE FROM resolution_requests RETURNING seq")
                .await?,
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `(kind, value) → profile` for the identifiers that exist.
pub async fn owners(
    tx: &impl GenericClient,
    kinds: &[&str],
    values: &[&str],
) -> Result<Vec<(String, String, Uuid)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT i.kind, i.value, i.profile_id
             FROM unnest($1::text[], $2::text[]) AS k(kind, value)
             JOIN identities i ON i.kind = k.kind AND i.value = k.value",
            )
            .await?,
            &[&kinds, &values],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

pub struct StoredProfile {
    pub id: Uuid,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub event_count: i64,
    pub traits: Value,
    pub trait_meta: Value,
}

pub async fn profiles(
    tx: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<StoredProfile>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &tx.prepare_cached("SELECT id, first_seen, last_seen, event_count, traits, trait_meta FROM profiles WHERE id = ANY($1)").await?,
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredProfile {
            id: r.get(0),
            first_seen: r.get(1),
            last_seen: r.get(2),
            event_count: r.get(3),
            traits: r.get(4),
            trait_meta: r.get(5),
        })
        .collect())
}

/// How many identifiers of each kind each profile holds.
pub async fn identity_counts(
    tx: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            &tx.prepare_cached("SELECT profile_id, kind, count(*) FROM identities WHERE profile_id = ANY($1) GROUP BY 1, 2").await?,
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Column-wise profile rows for one statement.
#[derive(Default)]
pub struct ProfileRows {
    pub id: Vec<Uuid>,
    pub first_seen: Vec<DateTime<Utc>>,
    pub last_seen: Vec<DateTime<Utc>>,
    pub event_count: Vec<i64>,
    pub traits: Vec<Value>,
    pub trait_meta: Vec<Value>,
}

pub async fn insert_profiles(
    tx: &impl GenericClient,
    rows: &ProfileRows,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        &tx.prepare_cached("INSERT INTO profiles (id, first_seen, last_seen, event_count, traits, trait_meta)
         SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::jsonb[], $6::jsonb[])").await?,
        &[&rows.id, &rows.first_seen, &rows.last_seen, &rows.event_count, &rows.traits, &rows.trait_meta],
    )
    .await
}

pub async fn update_profiles(
    tx: &impl GenericClient,
    rows: &ProfileRows,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        &tx.prepare_cached("UPDATE profiles p SET first_seen = u.first_seen, last_seen = u.last_seen, event_count = u.event_count,
                traits = u.traits, trait_meta = u.trait_meta, version = nextval('profile_versions'), updated_at = now()
         FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::int8[], $5::jsonb[], $6::jsonb[])
              AS u(id, first_seen, last_seen, event_count, traits, trait_meta)
         WHERE p.id = u.id AND p.id = ANY($1)").await?,
        &[&rows.id, &rows.first_seen, &rows.last_seen, &rows.event_count, &rows.traits, &rows.trait_meta],
    )
    .await
}

pub async fn insert_identities(
    tx: &impl GenericClient,
    kinds: &[&str],
    values: &[&str],
    profile_ids: &[Uuid],
    source_ids: &[Uuid],
    first_seen: &[DateTime<Utc>],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO identities (kind, value, profile_id, source_id, first_seen)
         SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[])",
        )
        .await?,
        &[&kinds, &values, &profile_ids, &source_ids, &first_seen],
    )
    .await
}

/// Moves everything of each loser to its final winner: identities, events, and profiles that
/// had been merged into the loser before.
pub async fn apply_merges(
    tx: &impl GenericClient,
    losers: &[Uuid],
    winners: &[Uuid],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &tx.prepare_cached("UPDATE identities i SET profile_id = m.winner FROM unnest($1::uuid[], $2::uuid[]) AS m(loser, winner)
         WHERE i.profile_id = m.loser AND i.profile_id = ANY($1)").await?,
        &[&losers, &winners],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached("UPDATE event_profiles e SET profile_id = m.winner FROM unnest($1::uuid[], $2::uuid[]) AS m(loser, winner)
         WHERE e.profile_id = m.loser AND e.profile_id = ANY($1)").await?,
        &[&losers, &winners],
    )
    .await?;
    // Memberships move to the survivor; where both were members, the earlier entry stands.
    tx.execute(
        &tx.prepare_cached("INSERT INTO segment_members (segment_id, profile_id, entered_at)
         SELECT s.segment_id, m.winner, min(s.entered_at)
         FROM segment_members s JOIN unnest($1::uuid[], $2::uuid[]) AS m(loser, winner) ON s.profile_id = m.loser
         WHERE s.profile_id = ANY($1)
         GROUP BY 1, 2
         ON CONFLICT (segment_id, profile_id) DO UPDATE SET entered_at = LEAST(segment_members.entered_at, EXCLUDED.entered_at)").await?,
        &[&losers, &winners],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached("DELETE FROM segment_members WHERE profile_id = ANY($1)")
            .await?,
        &[&losers],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached("UPDATE profiles p SET merged_into = m.winner, version = nextval('profile_versions'), updated_at = now()
         FROM unnest($1::uuid[], $2::uuid[]) AS m(loser, winner)
         WHERE (p.id = m.loser AND p.id = ANY($1)) OR (p.merged_into = m.loser AND p.merged_into = ANY($1))").await?,
        &[&losers, &winners],
    )
    .await?;
    Ok(())
}

pub async fn insert_merges(
    tx: &impl GenericClient,
    winners: &[Uuid],
    losers: &[Uuid],
    kinds: &[&str],
    values: &[&str],
    seqs: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO profile_merges (winner, loser, identity_kind, identity_value, event_seq)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[])",
        )
        .await?,
        &[&winners, &losers, &kinds, &values, &seqs],
    )
    .await
}

pub async fn mark_resolved(
    tx: &impl GenericClient,
    seqs: &[i64],
    profile_ids: &[Option<Uuid>],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        // A resolved event no longer needs finding by its identifiers.
        &tx.prepare_cached("WITH found AS (DELETE FROM pending_identifiers WHERE seq = ANY($1))
         UPDATE event_profiles e SET profile_id = r.profile_id, resolved_seq = nextval('event_resolutions')
         FROM unnest($1::int8[], $2::uuid[]) AS r(seq, profile_id) WHERE e.seq = r.seq AND e.seq = ANY($1)").await?,
        &[&seqs, &profile_ids],
    )
    .await
}
