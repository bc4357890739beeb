//! Durable writes of accepted messages into `events` (and their `event_profiles` queue rows): one
//! statement per request, deduplicated on (source, messageId) by the unique index.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::message::Message;
use crate::db::{Db, DbError};

// The event and its row in `event_profiles` (the resolver's queue) go in one statement, so one
// commit makes both durable.
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
RETURNING seq, ts)
INSERT INTO event_profiles (seq, ts) SELECT seq, ts FROM stored";

/// Stores `messages` in one round trip, committed when this returns; returns how many were new
/// (the rest were retries of messages already stored).
pub async fn insert_messages(
    db: &Db,
    source_id: Uuid,
    received_at: DateTime<Utc>,
    messages: &[Message],
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
    for m in messages {
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
    let inserted = client
        .execute(
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
            ],
        )
        .await?;
    Ok(inserted)
}
