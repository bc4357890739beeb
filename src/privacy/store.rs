//! The privacy stage's tables — `suppressions` and `privacy_epoch` — and the erasure's deletes
//! across the other stages' tables, all inside one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::db::{Db, DbError};

/// One suppressed identifier, as the API lists it (the value itself is not kept).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub id: Uuid,
    /// The identifier kind: user_id, anonymous_id, email, phone or an externalId type.
    pub kind: String,
    /// Hex SHA-256 of `kind:normalized value`.
    pub value_hash: String,
    /// Why it is suppressed, e.g. `erasure`.
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// A page of the list, optionally only one kind or one hash.
pub async fn list(
    db: &Db,
    after: Option<Uuid>,
    limit: i64,
    kind: Option<&str>,
    hash: Option<&[u8]>,
) -> Result<Vec<Suppression>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT id, kind, value_hash, reason, created_at FROM suppressions
             WHERE ($1::uuid IS NULL OR id > $1) AND ($3::text IS NULL OR kind = $3)
               AND ($4::bytea IS NULL OR value_hash = $4)
             ORDER BY id LIMIT $2",
            &[&after, &limit, &kind, &hash],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Suppression {
            id: r.get(0),
            kind: r.get(1),
            value_hash: hex::encode(r.get::<_, Vec<u8>>(2)),
            reason: r.get(3),
            created_at: r.get(4),
        })
        .collect())
}

/// Removes a suppression; `false` when there was none with that id.
pub async fn delete(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let mut client = db.conn().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute("DELETE FROM suppressions WHERE id = $1", &[&id])
        .await?;
    if n > 0 {
        bump_epoch(&tx).await?;
    }
    tx.commit().await?;
    Ok(n > 0)
}

/// Every suppressed hash.
pub async fn hashes(db: &Db) -> Result<Vec<Vec<u8>>, DbError> {
    let rows = db
        .conn()
        .await?
        .query("SELECT value_hash FROM suppressions", &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The current privacy epoch (bumped by every erasure and unsuppression).
pub async fn epoch(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT epoch FROM privacy_epoch", &[])
        .await?
        .get(0))
}

async fn bump_epoch(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute("UPDATE privacy_epoch SET epoch = epoch + 1", &[])
        .await?;
    Ok(())
}

/// Waits for the resolver's batch in flight (it holds the shared side of this lock) and keeps
/// the next one out until the erasure commits.
pub async fn lock_out_resolution(
    tx: &Transaction<'_>,
    key: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await?;
    Ok(())
}

/// The live profile an id stands for, and it with every profile merged into it (locked);
/// `None` when unknown.
pub async fn family(
    tx: &Transaction<'_>,
    id: Uuid,
) -> Result<Option<(Uuid, Vec<Uuid>)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "WITH live AS (SELECT coalesce(merged_into, id) AS id FROM profiles WHERE id = $1)
             SELECT p.id, live.id FROM profiles p, live
             WHERE p.id = live.id OR p.merged_into = live.id
             ORDER BY p.id
             FOR UPDATE OF p",
            &[&id],
        )
        .await?;
    let live = rows.first().map(|r| r.get(1));
    Ok(live.map(|live| (live, rows.iter().map(|r| r.get(0)).collect())))
}

/// The earliest `first_seen` of the profiles.
pub async fn earliest_seen(
    tx: &Transaction<'_>,
    profiles: &[Uuid],
) -> Result<DateTime<Utc>, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT coalesce(min(first_seen), now()) FROM profiles WHERE id = ANY($1)",
            &[&profiles],
        )
        .await?;
    Ok(row.get(0))
}

/// The identifiers the profiles hold.
pub async fn identifiers(
    tx: &Transaction<'_>,
    profiles: &[Uuid],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT kind, value FROM identities WHERE profile_id = ANY($1) ORDER BY kind, value",
            &[&profiles],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What one erasure deleted, table by table.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Deleted {
    pub events: u64,
    pub identities: u64,
    pub memberships: u64,
    pub membership_changes: u64,
    pub merges: u64,
    pub profiles: u64,
}

/// Deletes the profiles, everything naming them, their events, and the further events `extra`
/// (not yet resolved ones that carry their identifiers).
pub async fn delete_profiles(
    tx: &Transaction<'_>,
    profiles: &[Uuid],
    extra_events: &[i64],
) -> Result<Deleted, tokio_postgres::Error> {
    let events = tx
        .execute(
            "WITH gone AS (
                 DELETE FROM event_profiles WHERE profile_id = ANY($1) OR seq = ANY($2) RETURNING seq),
             findable AS (DELETE FROM pending_identifiers WHERE seq IN (SELECT seq FROM gone))
             DELETE FROM events WHERE seq IN (SELECT seq FROM gone)",
            &[&profiles, &extra_events],
        )
        .await?;
    let memberships = tx
        .execute(
            "DELETE FROM segment_members WHERE profile_id = ANY($1)",
            &[&profiles],
        )
        .await?;
    let membership_changes = tx
        .execute(
            "DELETE FROM segment_changes WHERE profile_id = ANY($1)",
            &[&profiles],
        )
        .await?;
    tx.execute(
        "DELETE FROM profile_computed WHERE profile_id = ANY($1)",
        &[&profiles],
    )
    .await?;
    let merges = tx
        .execute(
            "DELETE FROM profile_merges WHERE winner = ANY($1) OR loser = ANY($1)",
            &[&profiles],
        )
        .await?;
    let identities = tx
        .execute(
            "DELETE FROM identities WHERE profile_id = ANY($1)",
            &[&profiles],
        )
        .await?;
    // One statement: the survivor and the profiles merged into it go together, so the
    // `merged_into` references are checked only once none is left.
    let deleted = tx
        .execute("DELETE FROM profiles WHERE id = ANY($1)", &[&profiles])
        .await?;
    Ok(Deleted {
        events,
        identities,
        memberships,
        membership_changes,
        merges,
        profiles: deleted,
    })
}

/// Adds the hashes to the suppression list (those already there stay as they were) and bumps
/// the epoch; returns how many were new.
pub async fn suppress(
    tx: &Transaction<'_>,
    kinds: &[&str],
    hashes: &[Vec<u8>],
    reason: &str,
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<Uuid> = kinds.iter().map(|_| Uuid::now_v7()).collect();
    let n = tx
        .execute(
            "INSERT INTO suppressions (id, kind, value_hash, reason)
             SELECT u.id, u.kind, u.hash, $4 FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS u(id, kind, hash)
             ON CONFLICT (value_hash) DO NOTHING",
            &[&ids, &kinds, &hashes, &reason],
        )
        .await?;
    bump_epoch(tx).await?;
    Ok(n)
}

/// Whether the profiles still exist: the ones of `ids` that no longer do.
pub async fn vanished(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT u.id FROM unnest($1::uuid[]) AS u(id)
             WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = u.id)",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the suppression list has any entry.
pub async fn any_suppressed(tx: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_one("SELECT EXISTS (SELECT 1 FROM suppressions)", &[])
        .await?
        .get(0))
}

/// The hashes among `hashes` that are suppressed.
pub async fn suppressed_among(
    tx: &impl GenericClient,
    hashes: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT value_hash FROM suppressions WHERE value_hash = ANY($1)",
            &[&hashes],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes events (and their `event_profiles` rows) that must not be kept.
pub async fn delete_events(
    tx: &impl GenericClient,
    seqs: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "WITH gone AS (DELETE FROM event_profiles WHERE seq = ANY($1) RETURNING seq),
         findable AS (DELETE FROM pending_identifiers WHERE seq = ANY($1))
         DELETE FROM events WHERE seq IN (SELECT seq FROM gone)",
        &[&seqs],
    )
    .await
}
