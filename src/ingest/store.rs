//! Durable writes of accepted messages into `events` (and their `event_profiles` queue rows): one
//! statement per request, deduplicated on (source, messageId) by the unique index.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::message::Message;
use crate::db::{Db, DbError};
use crate::identity::IdentityRules;

// The event, its row in `event_profiles` (the resolver's queue) and its identifiers' keys
// in `pending_identifiers` (how a profile read finds it before it is resolved) go in one statement,
// so one commit makes them durable together. A retried message (a conflict) stores nothing.
const INSERT: &str = "
WITH stored AS (
INSERT INTO events (source_id, message_id, type, event, name, user_id, anonymous_id, group_id,
                    previous_id, ts, original_timestamp, sent_at, received_at,
                    properties, traits, context, integrations, extra)
SELECT $1, m.message_id, m.type, m.event, m.name, m.user_id, m.anonymous_id, m.group_id,
       m.previous_id, m.ts, m.original_timestamp, m.sent_at, $2,
       m.properties, m.traits, m.context, m.integrations, m.extra
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
            $10::text[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
            $14::jsonb[], $15::jsonb[], $16::jsonb[], $17::jsonb[], $18::jsonb[])
     AS m(message_id, type, event, name, user_id, anonymous_id, group_id, previous_id, ts,
          original_timestamp, sent_at, properties, traits, context, integrations, extra)
ON CONFLICT (source_id, message_id) DO NOTHING
RETURNING seq, ts, message_id),
queued AS (INSERT INTO event_profiles (seq, ts) SELECT seq, ts FROM stored),
findable AS (
INSERT INTO pending_identifiers (key, seq)
SELECT hashtextextended(i.value, hashtext(i.kind)), s.seq
FROM unnest($19::int4[], $20::text[], $21::text[]) AS i(message, kind, value)
JOIN stored s ON s.message_id = ($3::text[])[i.message])
SELECT count(*) FROM stored";

/// Stores `messages` in one round trip, committed when this returns; returns how many were new
/// (the rest were retries of messages already stored).
pub async fn insert_messages(
    db: &Db,
    source_id: Uuid,
    received_at: DateTime<Utc>,
    messages: &[Message],
    rules: &IdentityRules,
) -> Result<u64, DbError> {
    let n = messages.len();
    let mut message_id = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut event = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut user_id = Vec::with_capacity(n);
    let mut anonymous_id = Vec::with_capacity(n);
    let mut group_id = Vec::with_capacity(n);
    let mut previous_id = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut original_timestamp = Vec::with_capacity(n);
    let mut sent_at = Vec::with_capacity(n);
    let mut properties: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut traits: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut context: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut integrations: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut extra: Vec<Option<&Value>> = Vec::with_capacity(n);
    // Each identifier with the (1-based) position of its message.
    let (mut id_message, mut id_kind, mut id_value) = (Vec::new(), Vec::new(), Vec::new());
    for (i, m) in messages.iter().enumerate() {
        for id in rules.extract_either(|previous_kind| m.ids(previous_kind)) {
            id_message.push(i as i32 + 1);
            id_kind.push(id.kind);
            id_value.push(id.value);
        }
        message_id.push(m.message_id.as_str());
        kind.push(m.kind.as_str());
        event.push(m.event.as_deref());
        name.push(m.name.as_deref());
        user_id.push(m.user_id.as_deref());
        anonymous_id.push(m.anonymous_id.as_deref());
        group_id.push(m.group_id.as_deref());
        previous_id.push(m.previous_id.as_deref());
        ts.push(m.ts);
        original_timestamp.push(m.original_timestamp);
        sent_at.push(m.sent_at);
        properties.push(m.properties.as_ref());
        traits.push(m.traits.as_ref());
        context.push(m.context.as_ref());
        integrations.push(m.integrations.as_ref());
        extra.push(m.extra.as_ref());
    }
    let client = db.conn().await?;
    let statement = client.prepare_cached(INSERT).await?;
    let inserted: i64 = client
        .query_one(
            &statement,
            &[
                &source_id,
                &received_at,
                &message_id,
                &kind,
                &event,
                &name,
                &user_id,
                &anonymous_id,
                &group_id,
                &previous_id,
                &ts,
                &original_timestamp,
                &sent_at,
                &properties,
                &traits,
                &context,
                &integrations,
                &extra,
                &id_message,
                &id_kind,
                &id_value,
            ],
        )
        .await?
        .get(0);
    Ok(inserted as u64)
}
