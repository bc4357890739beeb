//! Reads of unified profiles: one round trip each, straight from the indexes.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Db, DbError};

/// The unified profile (API.md §3).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: Uuid,
    #[schema(value_type = Vec<Object>)]
    pub identities: Value,
    #[schema(value_type = Object)]
    pub traits: Value,
    /// Computed traits (filled by the query layer).
    #[schema(value_type = Object)]
    pub computed: Value,
    /// Segment memberships.
    #[schema(value_type = Vec<Object>)]
    pub segments: Value,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub event_count: i64,
    pub merged_from: Vec<Uuid>,
}

/// The profile read's select list over `profiles p`; `profile` reads it by position.
pub(super) const PROFILE_FIELDS: &str = r#"
       p.id, p.traits, p.first_seen, p.last_seen, p.event_count,
       coalesce((SELECT jsonb_agg(jsonb_build_object('kind', i.kind, 'value', i.value, 'source', i.source_id,
                                                    'first_seen', to_char(i.first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
                 FROM identities i WHERE i.profile_id = p.id), '[]'::jsonb),
       coalesce((SELECT array_agg(m.id) FROM profiles m WHERE m.merged_into = p.id), '{}'),
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', s.id, 'name', s.name, 'entered_at', to_char(sm.entered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
                 FROM segment_members sm JOIN segments s ON s.id = sm.segment_id WHERE sm.profile_id = p.id), '[]'::jsonb),
       coalesce((SELECT c.computed FROM profile_computed c WHERE c.profile_id = p.id), '{}'::jsonb)"#;
/// How many columns `PROFILE_FIELDS` has; a statement's own columns follow them.
pub(super) const PROFILE_FIELD_COUNT: usize = 9;

/// An array column: the events not yet resolved that carry one of the identifiers `keys` selects
/// (as `kind`, `value`), found through `pending_identifiers` (identity/on_read.rs), which holds
/// rows for pending events only: resolving or deleting an event deletes its rows.
pub(super) fn pending_with(keys: &str) -> String {
    format!(
        "ARRAY(SELECT DISTINCT w.seq FROM ({keys}) AS k
               JOIN pending_identifiers w ON w.key = hashtextextended(k.value, hashtext(k.kind)))"
    )
}

/// The identifiers of profile `p`, as `pending_with` takes them.
pub(super) const PROFILE_KEYS: &str =
    "SELECT i.kind, i.value FROM identities i WHERE i.profile_id = p.id";

/// By id; a merged-away id gives its survivor (merged_into always names the final survivor).
/// With the pending events that carry one of its identifiers (`BY_ID_WITH_PENDING`), or not.
fn by_id_statement(pending: &str) -> String {
    format!(
        "SELECT {PROFILE_FIELDS}, {pending}
         FROM profiles p WHERE p.id = coalesce((SELECT merged_into FROM profiles WHERE id = $1), $1)"
    )
}
static BY_ID_WITH_PENDING: LazyLock<String> =
    LazyLock::new(|| by_id_statement(&pending_with(PROFILE_KEYS)));
static BY_ID: LazyLock<String> = LazyLock::new(|| by_id_statement("'{}'::int8[]"));

/// A profile as read, and the events it does not show yet: acknowledged, not yet resolved, and
/// carrying the identifier asked for or one of the profile's (identity/on_read.rs).
pub struct Read {
    pub profile: Option<Profile>,
    pub pending: Vec<i64>,
}

pub(super) fn profile(row: &tokio_postgres::Row) -> Profile {
    let mut identities: Value = row.get(5);
    let mut merged_from: Vec<Uuid> = row.get(6);
    let mut segments: Value = row.get(7);
    sort_objects_by(&mut identities, &["first_seen", "kind", "value"]);
    merged_from.sort_unstable();
    sort_objects_by(&mut segments, &["entered_at", "id"]);
    Profile {
        id: row.get(0),
        traits: row.get(1),
        first_seen: row.get(2),
        last_seen: row.get(3),
        event_count: row.get(4),
        identities,
        merged_from,
        computed: row.get(8),
        segments,
    }
}

/// Orders a JSON array of objects by the string fields `keys`. The aggregates leave their order
/// to this: an `ORDER BY` inside them costs a sort per sub-select on every lookup, while the
/// strings compare as the columns do (timestamps in fixed-width UTC, identifiers and UUIDs in
/// byte order).
fn sort_objects_by(array: &mut Value, keys: &[&str]) {
    if let Value::Array(items) = array {
        items.sort_by(|a, b| {
            keys.iter()
                .map(|k| a[k].as_str().cmp(&b[k].as_str()))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
}

/// The profile `id` stands for; `pending`: with the pending events it would miss.
pub async fn by_id(db: &Db, id: Uuid, pending: bool) -> Result<Read, DbError> {
    let client = db.conn().await?;
    let sql: &str = if pending { &BY_ID_WITH_PENDING } else { &BY_ID };
    let statement = client.prepare_cached(sql).await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    Ok(Read {
        profile: row.as_ref().map(profile),
        pending: row.map(|r| r.get(PROFILE_FIELD_COUNT)).unwrap_or_default(),
    })
}

/// The live profile an id stands for (itself, or its survivor), if it exists.
pub async fn live_id(db: &Db, id: Uuid) -> Result<Option<Uuid>, DbError> {
    let row = db
        .conn()
        .await?
        .query_opt(
            "SELECT coalesce(merged_into, id) FROM profiles WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// One event of the cross-channel timeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineEvent {
    pub seq: i64,
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub event: Option<String>,
    pub name: Option<String>,
    pub ts: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub source: TimelineSource,
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub traits: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineSource {
    pub id: Uuid,
    pub name: String,
    /// web, mobile, support, email, pos, …
    pub kind: String,
}

/// Filters and position of a timeline page.
pub struct TimelineQuery {
    pub before: Option<(DateTime<Utc>, i64)>,
    pub source_id: Option<Uuid>,
    pub source_kind: Option<String>,
    pub kind: Option<String>,
    pub limit: i64,
}

pub async fn timeline(
    db: &Db,
    profile_id: Uuid,
    q: &TimelineQuery,
) -> Result<Vec<TimelineEvent>, DbError> {
    let (before_ts, before_seq) = match q.before {
        Some((ts, seq)) => (Some(ts), Some(seq)),
        None => (None, None),
    };
    let client = db.conn().await?;
    let statement = client
        .prepare_cached(
            "SELECT e.seq, e.message_id, e.type, e.event, e.name, e.ts, e.received_at,
                    e.source_id, s.name, s.kind, e.properties, e.traits, e.context
             FROM event_profiles p JOIN events e ON e.seq = p.seq JOIN sources s ON s.id = e.source_id
             WHERE p.profile_id = $1
               AND ($2::timestamptz IS NULL OR (p.ts, p.seq) < ($2, $3))
               AND ($4::uuid IS NULL OR e.source_id = $4)
               AND ($5::text IS NULL OR s.kind = $5)
               AND ($6::text IS NULL OR e.type = $6)
             ORDER BY p.ts DESC, p.seq DESC
             LIMIT $7",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &profile_id,
                &before_ts,
                &before_seq,
                &q.source_id,
                &q.source_kind,
                &q.kind,
                &q.limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TimelineEvent {
            seq: r.get(0),
            message_id: r.get(1),
            kind: r.get(2),
            event: r.get(3),
            name: r.get(4),
            ts: r.get(5),
            received_at: r.get(6),
            source: TimelineSource {
                id: r.get(7),
                name: r.get(8),
                kind: r.get(9),
            },
            properties: crate::db::lenient_json(r, 10),
            traits: crate::db::lenient_json(r, 11),
            context: crate::db::lenient_json(r, 12),
        })
        .collect())
}

/// One merge in a profile's lineage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Merge {
    /// The profile merged away.
    pub profile_id: Uuid,
    /// The profile it merged into at the time.
    pub into: Uuid,
    pub merged_at: DateTime<Utc>,
    /// The identifier of the message that joined them.
    pub identifier: MergeIdentifier,
    pub message_id: Option<String>,
    pub event_seq: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeIdentifier {
    pub kind: String,
    pub value: String,
}

/// Every merge that fed into `profile_id`, directly or through an earlier merge, oldest first.
pub async fn lineage(db: &Db, profile_id: Uuid) -> Result<Vec<Merge>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "WITH RECURSIVE tree AS (
                 SELECT m.* FROM profile_merges m WHERE m.winner = $1
                 UNION ALL
                 SELECT m.* FROM profile_merges m JOIN tree t ON m.winner = t.loser
             )
             SELECT t.loser, t.winner, t.merged_at, t.identity_kind, t.identity_value, e.message_id, t.event_seq
             FROM tree t LEFT JOIN events e ON e.seq = t.event_seq
             ORDER BY t.merged_at, t.id",
            &[&profile_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Merge {
            profile_id: r.get(0),
            into: r.get(1),
            merged_at: r.get(2),
            identifier: MergeIdentifier {
                kind: r.get(3),
                value: r.get(4),
            },
            message_id: r.get(5),
            event_seq: r.get(6),
        })
        .collect())
}

/// A computed trait as stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredComputedTrait {
    pub name: String,
    #[schema(value_type = Object)]
    pub definition: Value,
    /// `config` (read-only here) or `api`.
    pub origin: String,
    pub updated_at: DateTime<Utc>,
}

pub async fn computed_traits(db: &Db) -> Result<Vec<StoredComputedTrait>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT name, definition, origin, updated_at FROM computed_traits ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredComputedTrait {
            name: r.get(0),
            definition: r.get(1),
            origin: r.get(2),
            updated_at: r.get(3),
        })
        .collect())
}

/// Creates or replaces a computed trait; `false` when a config-declared one of that name exists
/// and `origin` is `api`.
pub async fn put_computed_trait(
    db: &Db,
    name: &str,
    definition: &Value,
    origin: &str,
) -> Result<bool, DbError> {
    let n = db
        .conn()
        .await?
        .execute(
            "INSERT INTO computed_traits (name, definition, origin) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()
             WHERE computed_traits.origin = EXCLUDED.origin OR EXCLUDED.origin = 'config'",
            &[&name, definition, &origin],
        )
        .await?;
    Ok(n > 0)
}

pub async fn delete_computed_trait(db: &Db, name: &str) -> Result<Option<String>, DbError> {
    let client = db.conn().await?;
    let origin: Option<String> = client
        .query_opt(
            "SELECT origin FROM computed_traits WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0));
    if origin.as_deref() == Some("api") {
        client
            .execute("DELETE FROM computed_traits WHERE name = $1", &[&name])
            .await?;
    }
    Ok(origin)
}

/// Replaces every profile's computed values.
pub async fn write_computed(
    db: &Db,
    ids: &[Uuid],
    values: &[Value],
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    let mut chunks = ids.chunks(10_000).zip(values.chunks(10_000));
    write_computed_chunks(db, at, || {
        chunks.next().map(|(i, v)| (i.to_vec(), v.to_vec()))
    })
    .await
}

/// Replaces every profile's computed values with the chunks `next` makes until it answers
/// `None`, in one transaction; a chunk is built only when the previous one is written, so a
/// million profiles' values are never all in memory at once.
pub async fn write_computed_chunks(
    db: &Db,
    at: DateTime<Utc>,
    mut next: impl FnMut() -> Option<(Vec<Uuid>, Vec<Value>)>,
) -> Result<(), DbError> {
    let mut client = db.conn().await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM profile_computed", &[]).await?;
    while let Some((ids, values)) = next() {
        tx.execute(
            "INSERT INTO profile_computed (profile_id, computed, computed_at)
             SELECT u.id, u.computed, $3 FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, computed)
             JOIN profiles p ON p.id = u.id AND p.merged_into IS NULL",
            &[&ids, &values, &at],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::sort_objects_by;

    #[test]
    fn identities_come_oldest_first_then_by_kind_and_value_in_byte_order() {
        let mut identities = json!([
            {"kind": "user_id", "value": "u1", "first_seen": "2026-01-02T00:00:00.000000Z"},
            {"kind": "email", "value": "b@x.io", "first_seen": "2026-01-01T00:00:00.000001Z"},
            {"kind": "email", "value": "a@x.io", "first_seen": "2026-01-01T00:00:00.000001Z"},
            {"kind": "anonymous_id", "value": "a", "first_seen": "2026-01-01T00:00:00.000001Z"},
            {"kind": "anonymous_id", "value": "Z", "first_seen": "2026-01-01T00:00:00.000001Z"},
            {"kind": "phone", "value": "+44", "first_seen": "2025-12-31T23:59:59.999999Z"},
        ]);
        sort_objects_by(&mut identities, &["first_seen", "kind", "value"]);
        let order: Vec<&str> = identities
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["+44", "Z", "a", "a@x.io", "b@x.io", "u1"]);
    }
}
