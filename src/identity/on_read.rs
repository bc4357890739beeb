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
//! Looking for pending messages nearly doubles what a lookup costs PostgreSQL (BENCHMARKS.md), so
//! a read looks only while a backlog may exist (`Backlog`): from the moment this instance stores a
//! message, or another instance's shows up in the periodic check, until a check finds none.
//!
//! Resolving a message ahead of older pending ones is what the resolver would have done had it
//! arrived first; arrival order among messages in flight is arbitrary, so every outcome is one the
//! resolver could have reached anyway (docs/ARCHITECTURE.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::db::{Db, DbError};
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
    // An idle resolver naps until woken; a busy one may be resting (resolver.rs).
    state.resolver_wake.notify_one();
    state.resolution_asked.notify_one();
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

/// Whether messages may be waiting for resolution, as reads ask it before looking for them.
#[derive(Default)]
pub struct Backlog {
    /// Bumped by every store of this instance.
    stored: AtomicU64,
    /// `stored` as it was before the last check that found nothing pending.
    cleared: AtomicU64,
    /// What the last check found.
    found: AtomicBool,
}

impl Backlog {
    /// This instance has just stored messages (before acknowledging them).
    pub fn stored(&self) {
        self.stored.fetch_add(1, Ordering::SeqCst);
    }

    /// False only when a check found nothing pending and this instance has stored nothing since
    /// that check began.
    pub fn may_exist(&self) -> bool {
        self.found.load(Ordering::SeqCst)
            || self.stored.load(Ordering::SeqCst) != self.cleared.load(Ordering::SeqCst)
    }

    /// Checks the database every `every` until shutdown: what other instances store shows up
    /// here within that time (a message found later is still resolved within about that time
    /// when the resolver is idle, and while it is not, the check finds the backlog).
    pub async fn watch(
        self: std::sync::Arc<Self>,
        db: Db,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        while !*shutdown.borrow() {
            let before = self.stored.load(Ordering::SeqCst);
            // Unknown: reads keep looking.
            let found = self.check(&db).await.unwrap_or(true);
            self.checked(before, found);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// A check that began when `stored` was `before` found a backlog, or not.
    fn checked(&self, before: u64, found: bool) {
        self.found.store(found, Ordering::SeqCst);
        if !found {
            self.cleared.store(before, Ordering::SeqCst);
        }
    }

    async fn check(&self, db: &Db) -> Result<bool, DbError> {
        let client = db.conn().await?;
        // Through the `seq` index: the table's first pages hold rows resolution has deleted
        // (until vacuum), and a scan for any live row read all of them, 20 times a second.
        let any = client
            .prepare_cached("SELECT min(seq) IS NOT NULL FROM pending_identifiers")
            .await?;
        Ok(client.query_one(&any, &[]).await?.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_assumed_from_a_store_until_a_check_begun_after_it_finds_none() {
        let backlog = Backlog::default();
        assert!(!backlog.may_exist(), "a new instance has stored nothing");
        backlog.stored();
        assert!(backlog.may_exist(), "from the store on");
        // A check that began before the store (it may not see the message) clears nothing.
        backlog.checked(0, false);
        assert!(backlog.may_exist());
        // One that began after it, and found nothing pending, does.
        let before = backlog.stored.load(Ordering::SeqCst);
        backlog.checked(before, false);
        assert!(!backlog.may_exist());
        // Another instance's backlog, found by a check, counts until a check finds none.
        backlog.checked(before, true);
        assert!(backlog.may_exist());
        backlog.checked(before, false);
        assert!(!backlog.may_exist());
    }
}
