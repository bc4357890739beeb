//! Profile reads that see every acknowledged message.
//!
//! The resolver works behind ingest, so under a burst acknowledged messages wait in a backlog for
//! seconds. A profile read does not wait for the backlog: it finds, through
//! `pending_identifiers` (written by ingest with each message, deleted when the message is
//! resolved), the pending messages that carry the identifier it was asked for or one of the
//! profile's own, asks the resolver to take those next (`resolution_requests`), and reads again
//! once they are resolved. The resolver adds requested messages to its next batch, so a read
//! waits for about one batch, not the backlog.
//!
//! Resolving a message ahead of older pending ones is what the resolver would have done had it
//! arrived first; arrival order among messages in flight is arbitrary, so every outcome is one the
//! resolver could have reached anyway (docs/ARCHITECTURE.md).

use std::time::{Duration, Instant};

use crate::db::DbError;
use crate::startup::AppState;

/// How often a read checks on its messages when the resolver runs in another instance (this
/// instance's resolver says when each batch commits).
const POLL: Duration = Duration::from_millis(20);

/// Asks the resolver to take the events `seqs` next and waits until none of them is pending, or
/// until `identity.read_wait_ms` has passed; whether they all were resolved (or deleted).
pub async fn settle(state: &AppState, seqs: &[i64]) -> Result<bool, DbError> {
    let wait = Duration::from_millis(state.settings.identity.read_wait_ms);
    if seqs.is_empty() {
        return Ok(true);
    }
    if wait.is_zero() {
        return Ok(false);
    }
    let deadline = Instant::now() + wait;
    {
        let client = state.db.conn().await?;
        let request = client
            .prepare_cached(
                "INSERT INTO resolution_requests (seq) SELECT unnest($1::int8[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        client.execute(&request, &[&seqs]).await?;
    }
    state.resolver_wake.notify_one();
    loop {
        // Listening before looking: a batch committing in between still wakes this read.
        let committed = state.resolved.notified();
        tokio::pin!(committed);
        committed.as_mut().enable();
        let left: i64 = {
            let client = state.db.conn().await?;
            let left = client
                .prepare_cached(
                    "SELECT count(*) FROM event_profiles
                     WHERE seq = ANY($1) AND resolved_seq IS NULL",
                )
                .await?;
            client.query_one(&left, &[&seqs]).await?.get(0)
        };
        if left == 0 {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::debug!(
                events = seqs.len(),
                left,
                "a profile read stopped waiting for the resolver"
            );
            return Ok(false);
        }
        let _ = tokio::time::timeout((deadline - now).min(POLL), committed).await;
    }
}
