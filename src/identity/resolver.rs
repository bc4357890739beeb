//! The resolver: one writer per database (an advisory lock elects it among instances) takes
//! unresolved events in batches, decides each in `seq` order in memory, and writes the outcome —
//! new profiles, identities, merges, traits, and each event's `profile_id` — in one transaction.
//! A crash rolls the batch back and it is taken again: nothing is lost or resolved twice.
//!
//! Batches go through two connections in turn, one stage apart: while batch K is written and
//! committed on one, batch K+1 is read, looked up and decided on the other, through K's outcome
//! (`prepare`). Batches still commit one after another, in order, so the result — and the order
//! of `resolved_seq` and profile versions the snapshot follows — is the serial resolver's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::decide::{decide, ProfileFacts, Target};
use super::store::{self, PendingEvent, ProfileRows};
use super::{Identifier, IdentityRules, ANONYMOUS_ID, USER_ID};
use crate::db::{Db, DbError};
use crate::metrics::Metrics;
use crate::profiles::traits::{self, Observation};

/// A fixed key for `pg_try_advisory_lock`: whoever holds it is the resolver.
const RESOLVER_LOCK: i64 = 0x6b697a_7265736f; // "kiz" "reso"

pub struct Resolver {
    pub db: Db,
    pub rules: Arc<IdentityRules>,
    pub batch_size: i64,
    pub idle: Duration,
    pub wake: Arc<Notify>,
    /// Told after every batch commits (reads waiting for events, on_read.rs).
    pub resolved: Arc<Notify>,
    /// Told when a read of this instance asks for messages to be resolved (on_read.rs).
    pub asked: Arc<Notify>,
    /// How long to rest, relative to a batch, while ingest is busy; and the lag that ends resting.
    pub busy_rest: f64,
    pub max_lag: Duration,
    pub metrics: Arc<Metrics>,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchOutcome {
    pub events: usize,
    pub merges: usize,
    /// Events deleted instead of resolved: they carry a suppressed (erased) identifier.
    pub suppressed: usize,
}

impl Resolver {
    /// The resolver of a running server, as its configuration sets it up.
    pub fn for_state(state: &crate::startup::AppState) -> Self {
        Resolver {
            db: state.db.clone(),
            rules: state.rules.clone(),
            batch_size: state.settings.identity.batch_size,
            idle: Duration::from_millis(state.settings.identity.poll_interval_ms),
            wake: state.resolver_wake.clone(),
            resolved: state.resolved.clone(),
            asked: state.resolution_asked.clone(),
            busy_rest: state.settings.identity.busy_rest,
            max_lag: Duration::from_millis(state.settings.identity.max_lag_ms),
            metrics: state.metrics.clone(),
        }
    }

    /// Runs until `shutdown` turns true; the batch in progress is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            if let Err(err) = self.lead(&mut shutdown).await {
                tracing::warn!(error = %err, "identity resolver paused; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        tracing::info!("identity resolver stopped");
    }

    /// Holds the resolver lock on one connection and resolves until shutdown or an error. Two
    /// connections take turns: while one writes and commits batch K, the other already reads,
    /// looks up and decides batch K+1, seeing K's outcome before K commits (see `prepare`).
    async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), DbError> {
        let leader = self.db.conn().await?;
        let locked: bool = leader
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RESOLVER_LOCK])
            .await?
            .get(0);
        if !locked {
            // Another instance resolves; check again later in case it goes away.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => {}
            }
            return Ok(());
        }
        let second = match self.db.conn().await {
            Ok(second) => second,
            Err(err) => {
                // Closed, not pooled: a pooled connection would keep the resolver lock.
                drop(deadpool_postgres::Object::take(leader));
                return Err(err);
            }
        };
        let clients = [leader, second];
        let resolved = self.pipeline(&clients, shutdown).await;
        let [leader, second] = clients;
        match resolved {
            Ok(()) => {
                leader
                    .execute("SELECT pg_advisory_unlock($1)", &[&RESOLVER_LOCK])
                    .await?;
                Ok(())
            }
            Err(err) => {
                // Either connection may sit in a failed or unfinished transaction: close both
                // rather than hand them back to the pool (closing also frees the resolver lock).
                drop(deadpool_postgres::Object::take(leader));
                drop(deadpool_postgres::Object::take(second));
                Err(err)
            }
        }
    }

    /// Waits until ingest wakes the resolver, the idle interval passes or shutdown begins.
    async fn nap(&self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(self.idle) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Reads do not wait for the backlog (on_read.rs), so while ingest is busy the resolver
    /// leaves it the CPU: after a batch that took `worked`, it rests `busy_rest` times as long,
    /// unless the batch's oldest message (the backlog's, batches being taken oldest first) has
    /// waited `max_lag` already. It still serves reads meanwhile: at once when a read of this
    /// instance asks, and every `idle` for those of other instances, it resolves just the
    /// messages reads wait for, in a batch of their own.
    async fn rest(
        &self,
        clients: &[deadpool_postgres::Object; 2],
        batch: &Decided,
        worked: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DbError> {
        let Some(oldest) = batch.received.iter().min() else {
            return Ok(());
        };
        let waited = (Utc::now() - *oldest).to_std().unwrap_or_default();
        // (also turns away a NaN from the configuration)
        if self.busy_rest.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || waited >= self.max_lag
        {
            return Ok(());
        }
        let rest = Duration::try_from_secs_f64(worked.as_secs_f64() * self.busy_rest)
            .unwrap_or(Duration::MAX)
            .min(self.max_lag - waited);
        let until = tokio::time::Instant::now() + rest;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + self.idle)) => {}
                _ = self.asked.notified() => {}
                _ = shutdown.changed() => return Ok(()),
            }
            // A batch of only the requested messages (none of the oldest), if there are any.
            if let Some(asked) = self.prepare_on(clients, 0, None, 0).await? {
                let committed = finish(&clients[0], &asked).await?;
                self.record(&asked, committed);
            }
            if tokio::time::Instant::now() >= until {
                return Ok(());
            }
        }
    }

    /// `prepare` on `clients[index]`.
    async fn prepare_on(
        &self,
        clients: &[deadpool_postgres::Object; 2],
        index: usize,
        prior: Option<&Decided>,
        limit: i64,
    ) -> Result<Option<Decided>, DbError> {
        prepare(&clients[index], index, &self.rules, limit, prior).await
    }

    /// After `batch` committed at `committed`: wakes the reads waiting for it and counts it.
    fn record(&self, batch: &Decided, committed: DateTime<Utc>) {
        self.resolved.notify_waiters();
        // Freshness as users see it: from receipt to the commit that shows the profile.
        for received in &batch.received {
            let lag = (committed - *received).num_microseconds().unwrap_or(0);
            self.metrics.resolution_lag.observe(lag.max(0) as f64 / 1e6);
        }
        self.metrics
            .events_resolved
            .inc_by(batch.received.len() as u64);
        let outcome = batch.outcome;
        self.metrics.profile_merges.inc_by(outcome.merges as u64);
        self.metrics
            .events_suppressed
            .inc_by(outcome.suppressed as u64);
    }

    async fn pipeline(
        &self,
        clients: &[deadpool_postgres::Object; 2],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), DbError> {
        let mut next: Option<Decided> = None;
        let mut last_ingested = self.metrics.events_ingested.get();
        // When the resolver last rested, napped or overlapped: what a resting batch took since.
        let mut since_rest = std::time::Instant::now();
        loop {
            if *shutdown.borrow() && next.is_none() {
                return Ok(());
            }
            let current = match next.take() {
                Some(decided) => decided,
                None => match self.prepare_on(clients, 0, None, self.batch_size).await? {
                    Some(decided) => decided,
                    None => {
                        self.nap(shutdown).await;
                        since_rest = std::time::Instant::now();
                        continue;
                    }
                },
            };
            let other = 1 - current.client;
            // Acknowledgements come first: while ingest stores messages faster than a batch
            // clears them, the next batch waits for this one to commit, so resolution keeps to
            // one core and leaves the other to ingest; once ingest eases (a trickle does not
            // count), the two overlap and the backlog drains on both cores.
            let ingested = self.metrics.events_ingested.get();
            let ingest_busy =
                ingested.saturating_sub(last_ingested) > current.outcome.events as u64;
            last_ingested = ingested;
            let stopping = *shutdown.borrow();
            if ingest_busy || stopping {
                let committed = finish(&clients[current.client], &current).await?;
                self.record(&current, committed);
                if ingest_busy && !stopping {
                    self.rest(clients, &current, since_rest.elapsed(), shutdown)
                        .await?;
                    since_rest = std::time::Instant::now();
                }
                next = match stopping {
                    true => None,
                    false => {
                        self.prepare_on(clients, other, None, self.batch_size)
                            .await?
                    }
                };
            } else {
                let (written, prepared) = tokio::join!(
                    finish(&clients[current.client], &current),
                    self.prepare_on(clients, other, Some(&current), self.batch_size)
                );
                next = prepared?;
                self.record(&current, written?);
                since_rest = std::time::Instant::now();
            }
            let outcome = current.outcome;
            if next.is_none() && (outcome.events as i64) < self.batch_size {
                self.nap(shutdown).await;
                since_rest = std::time::Instant::now();
            }
        }
    }
}

/// A profile as the batch sees it.
#[derive(Clone)]
struct Live {
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    event_count: i64,
    traits: Map<String, Value>,
    meta: Map<String, Value>,
    counts: HashMap<String, usize>,
    is_new: bool,
}

#[derive(Default)]
struct Batch {
    owners: HashMap<Identifier, Uuid>,
    profiles: HashMap<Uuid, Live>,
    /// loser → the profile it merged into
    forward: HashMap<Uuid, Uuid>,
    merged_away_new: Vec<(Uuid, Live)>,
    new_identities: Vec<(Identifier, Uuid, Uuid, DateTime<Utc>)>,
    merges: Vec<(Uuid, Uuid, Identifier, i64)>,
    attributed: Vec<(i64, Option<Uuid>)>,
}

impl Batch {
    fn find(&self, mut p: Uuid) -> Uuid {
        while let Some(next) = self.forward.get(&p) {
            p = *next;
        }
        p
    }

    fn owner(&self, id: &Identifier) -> Option<Uuid> {
        self.owners.get(id).map(|p| self.find(*p))
    }

    fn facts(&self, p: Uuid) -> ProfileFacts {
        let live = &self.profiles[&p];
        ProfileFacts {
            first_seen: live.first_seen,
            counts: live.counts.clone(),
        }
    }

    fn merge(&mut self, winner: Uuid, loser: Uuid, set_once: &HashSet<String>) {
        let Some(gone) = self.profiles.remove(&loser) else {
            return;
        };
        let Some(w) = self.profiles.get_mut(&winner) else {
            return;
        };
        w.first_seen = w.first_seen.min(gone.first_seen);
        w.last_seen = w.last_seen.max(gone.last_seen);
        w.event_count += gone.event_count;
        for (kind, n) in &gone.counts {
            *w.counts.entry(kind.clone()).or_insert(0) += n;
        }
        traits::merge(
            &mut w.traits,
            &mut w.meta,
            &gone.traits,
            &gone.meta,
            set_once,
        );
        self.forward.insert(loser, winner);
        if gone.is_new {
            self.merged_away_new.push((loser, gone));
        }
    }

    fn resolve(&mut self, event: &PendingEvent, rules: &IdentityRules) {
        let previous_kind = match &event.previous_id {
            Some(prev) if self.owner(&Identifier::new(USER_ID, prev.trim())).is_some() => USER_ID,
            _ => ANONYMOUS_ID,
        };
        let ids = rules.extract(&event.ids(previous_kind));
        if ids.is_empty() {
            self.attributed.push((event.seq, None));
            return;
        }
        let decision = decide(&ids, |id| self.owner(id), |p| self.facts(p), rules);
        if !decision.dropped.is_empty() {
            tracing::debug!(
                seq = event.seq,
                dropped = decision.dropped.len(),
                "identifiers dropped by limits"
            );
        }
        let target = match decision.target {
            Target::Existing(p) => p,
            Target::New => {
                let id = Uuid::now_v7();
                self.profiles.insert(
                    id,
                    Live {
                        first_seen: event.ts,
                        last_seen: event.ts,
                        event_count: 0,
                        traits: Map::new(),
                        meta: Map::new(),
                        counts: HashMap::new(),
                        is_new: true,
                    },
                );
                id
            }
        };
        for (loser, joined_by) in decision.losers {
            self.merge(target, loser, &rules.set_once_traits);
            self.merges.push((target, loser, joined_by, event.seq));
        }
        let live = self.profiles.get_mut(&target).expect("target is live");
        for id in decision.attach {
            *live.counts.entry(id.kind.clone()).or_insert(0) += 1;
            self.owners.insert(id.clone(), target);
            self.new_identities
                .push((id, target, event.source_id, event.ts));
        }
        live.first_seen = live.first_seen.min(event.ts);
        live.last_seen = live.last_seen.max(event.ts);
        live.event_count += 1;
        if let Some(incoming) = identify_traits(event) {
            let seen = Observation {
                ts: event.ts,
                seq: event.seq,
                source: Some(event.source_id),
            };
            traits::apply(
                &mut live.traits,
                &mut live.meta,
                &incoming,
                &seen,
                &rules.set_once_traits,
            );
        }
        self.attributed.push((event.seq, Some(target)));
    }
}

/// An identify's traits: `context.traits` overlaid by the top-level `traits`.
fn identify_traits(event: &PendingEvent) -> Option<Map<String, Value>> {
    if event.kind != "identify" {
        return None;
    }
    let mut merged = event
        .context_traits
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(traits)) = &event.traits {
        merged.extend(traits.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    (!merged.is_empty()).then_some(merged)
}

/// A batch read, looked up and decided inside its still-open transaction on `clients[client]`,
/// waiting to be written and committed by `finish`.
struct Decided {
    client: usize,
    /// The transaction's id, for the next batch to ask whether this one has committed.
    txid: i64,
    /// Every event the batch took (resolved or deleted as suppressed): the next batch, read
    /// while this one is uncommitted, must not take them again.
    taken: Vec<i64>,
    /// When each event the batch resolves (not those deleted as suppressed) was received.
    received: Vec<DateTime<Utc>>,
    batch: Batch,
    outcome: BatchOutcome,
}

/// Resolves up to `limit` pending events in one transaction on `client` (what the resolver does
/// when no other batch is in flight).
pub async fn resolve_batch(
    client: &deadpool_postgres::Object,
    rules: &IdentityRules,
    limit: i64,
) -> Result<BatchOutcome, DbError> {
    let resolved = async {
        match prepare(client, 0, rules, limit, None).await? {
            Some(decided) => finish(client, &decided).await.map(|_| decided.outcome),
            None => Ok(BatchOutcome::default()),
        }
    }
    .await;
    if resolved.is_err() {
        // (best effort: a broken connection has no transaction left to end)
        let _ = client.batch_execute("ROLLBACK").await;
    }
    resolved
}

/// Opens a transaction on `client` and reads, looks up and decides the next batch in it; `None`
/// (and the transaction closed) when nothing is pending.
///
/// `prior` is the batch being written on the other connection meanwhile. Until it commits the
/// database does not show its outcome, so this batch sees the database through it: an
/// identifier `prior` knows belongs to the profile `prior` gave it, a profile `prior` merged away
/// is read as its survivor, and a profile `prior` holds is taken as `prior` left it. Whichever
/// of its statements run before or after `prior` commits, the answers are the same, and they are
/// what a batch started after `prior`'s commit would see. The one thing that could come between
/// is an erasure, and it cannot: `prior` holds the erasure lock shared until it commits, and
/// this batch takes it shared before it asks whether `prior` is still in progress. If `prior`
/// has already committed, the database is read as it is (an erasure may have run since).
async fn prepare(
    client: &deadpool_postgres::Object,
    index: usize,
    rules: &IdentityRules,
    limit: i64,
    prior: Option<&Decided>,
) -> Result<Option<Decided>, DbError> {
    // In one round trip (the lock key and prior's txid are numbers we made):
    // - events are durable before this runs and a resolution lost in a crash is simply redone, so
    //   the commit need not wait for its WAL flush;
    // - every statement of a batch reads or writes at most a batch's rows by key, but left to
    //   itself the planner turns `= ANY($1)` over a thousand keys into a scan of all of
    //   `event_profiles` or `identities` once its statistics (lagging a fast-growing table) call
    //   the table small: a cost that grows with the data, where index probes stay flat;
    // - an erasure holds the erasure lock exclusively: a batch never works from profiles it
    //   deletes; and only once this batch holds it, whether `prior` is still in progress.
    let status = match prior {
        Some(prior) => format!("txid_status({})", prior.txid),
        None => "NULL".to_string(),
    };
    let rows = client
        .simple_query(&format!(
            "BEGIN; SET LOCAL synchronous_commit = off; SET LOCAL enable_seqscan = off;
             SELECT pg_advisory_xact_lock_shared({});
             SELECT txid_current()::text, {status}",
            crate::privacy::ERASURE_LOCK
        ))
        .await?;
    let (txid, prior_status) = rows
        .iter()
        .rev()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                row.get(0).and_then(|t| t.parse::<i64>().ok()),
                row.get(1).map(str::to_string),
            )),
            _ => None,
        })
        .ok_or_else(|| DbError::Unavailable("BEGIN returned no transaction id".into()))?;
    let txid = txid.ok_or_else(|| DbError::Unavailable("unreadable transaction id".into()))?;
    let overlay = match (prior, prior_status.as_deref()) {
        (None, _) | (Some(_), Some("committed")) => None,
        (Some(prior), Some("in progress")) => Some(&prior.batch),
        (Some(_), other) => {
            return Err(DbError::Unavailable(format!(
                "the batch before ended {other:?}; starting over"
            )))
        }
    };
    let started = std::time::Instant::now();
    let skip = prior.map(|p| p.taken.as_slice()).unwrap_or(&[]);
    // The oldest pending events, and besides them any that a read is waiting for (on_read.rs).
    let (requested, mut events) = futures::try_join!(
        store::take_requests(client),
        store::pending_events(client, limit, skip)
    )?;
    let extra: Vec<i64> = requested
        .into_iter()
        .filter(|seq| !skip.contains(seq) && !events.iter().any(|e| e.seq == *seq))
        .collect();
    if !extra.is_empty() {
        events.extend(store::pending_among(client, &extra).await?);
        events.sort_unstable_by_key(|e| e.seq);
    }
    if events.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(None);
    }
    let taken: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let (events, suppressed) = crate::privacy::sweep_pending(&***client, rules, events).await?;
    let read = started.elapsed();

    // Every identifier the batch could touch, looked up at once (aliases both ways).
    let mut wanted: HashSet<Identifier> = HashSet::new();
    for event in &events {
        wanted.extend(rules.extract_either(|kind| event.ids(kind)));
    }
    // What `prior` knows it answers itself; the database is asked for the rest.
    let (kinds, values): (Vec<&str>, Vec<&str>) = wanted
        .iter()
        .filter(|id| overlay.is_none_or(|prior| prior.owner(id).is_none()))
        .map(|id| (id.kind.as_str(), id.value.as_str()))
        .unzip();
    let mut stored: HashMap<Identifier, Uuid> = HashMap::new();
    for (kind, value, profile) in store::owners(client, &kinds, &values).await? {
        stored.insert(Identifier { kind, value }, profile);
    }
    let mut batch = Batch::default();
    for id in wanted {
        let owner = match overlay {
            Some(prior) => prior
                .owner(&id)
                .or_else(|| stored.get(&id).map(|p| prior.find(*p))),
            None => stored.get(&id).copied(),
        };
        if let Some(owner) = owner {
            batch.owners.insert(id, owner);
        }
    }
    let mut ids: Vec<Uuid> = batch.owners.values().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    // Profiles `prior` holds are taken as it left them; the database is read for the rest.
    ids.retain(|p| match overlay.and_then(|prior| prior.profiles.get(p)) {
        Some(live) => {
            // Written by `prior` before this batch writes: an update now, not an insert.
            let mut live = live.clone();
            live.is_new = false;
            batch.profiles.insert(*p, live);
            false
        }
        None => true,
    });
    // Both in flight at once on the one connection (tokio-postgres pipelines them).
    let (loaded, counts) = futures::try_join!(
        store::profiles(client, &ids),
        store::identity_counts(client, &ids)
    )?;
    for p in loaded {
        batch.profiles.insert(
            p.id,
            Live {
                first_seen: p.first_seen,
                last_seen: p.last_seen,
                event_count: p.event_count,
                traits: as_map(p.traits),
                meta: as_map(p.trait_meta),
                counts: HashMap::new(),
                is_new: false,
            },
        );
    }
    for (p, kind, n) in counts {
        if let Some(live) = batch.profiles.get_mut(&p) {
            live.counts.insert(kind, n as usize);
        }
    }

    let looked_up = started.elapsed();
    for event in &events {
        batch.resolve(event, rules);
    }
    tracing::debug!(
        events = events.len(),
        merges = batch.merges.len(),
        through_prior = overlay.is_some(),
        read_ms = read.as_secs_f64() * 1e3,
        lookup_ms = (looked_up - read).as_secs_f64() * 1e3,
        decide_ms = (started.elapsed() - looked_up).as_secs_f64() * 1e3,
        "decided a batch"
    );
    let received = events.iter().map(|e| e.received_at).collect();
    let outcome = BatchOutcome {
        events: taken.len(),
        merges: batch.merges.len(),
        suppressed,
    };
    Ok(Some(Decided {
        client: index,
        txid,
        taken,
        received,
        batch,
        outcome,
    }))
}

/// Writes a decided batch and commits it; when the commit came back.
async fn finish(
    client: &deadpool_postgres::Object,
    decided: &Decided,
) -> Result<DateTime<Utc>, DbError> {
    let started = std::time::Instant::now();
    write(client, &decided.batch).await?;
    let written = started.elapsed();
    client.batch_execute("COMMIT").await?;
    let committed = Utc::now();
    tracing::debug!(
        events = decided.outcome.events,
        write_ms = written.as_secs_f64() * 1e3,
        commit_ms = (started.elapsed() - written).as_secs_f64() * 1e3,
        "resolved a batch"
    );
    Ok(committed)
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn write(tx: &deadpool_postgres::Object, batch: &Batch) -> Result<(), DbError> {
    let (mut inserted, mut updated) = (ProfileRows::default(), ProfileRows::default());
    let live = batch.profiles.iter().map(|(id, l)| (*id, l));
    let gone = batch.merged_away_new.iter().map(|(id, l)| (*id, l));
    for (id, profile) in live.chain(gone) {
        let rows = if profile.is_new {
            &mut inserted
        } else {
            &mut updated
        };
        rows.id.push(id);
        rows.first_seen.push(profile.first_seen);
        rows.last_seen.push(profile.last_seen);
        rows.event_count.push(profile.event_count);
        rows.traits.push(Value::Object(profile.traits.clone()));
        rows.trait_meta.push(Value::Object(profile.meta.clone()));
    }
    let n = batch.new_identities.len();
    let (mut kinds, mut values, mut owners, mut sources, mut seen) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (id, profile, source, first_seen) in &batch.new_identities {
        kinds.push(id.kind.as_str());
        values.push(id.value.as_str());
        owners.push(batch.find(*profile));
        sources.push(*source);
        seen.push(*first_seen);
    }
    let seqs: Vec<i64> = batch.attributed.iter().map(|a| a.0).collect();
    let profiles: Vec<Option<Uuid>> = batch
        .attributed
        .iter()
        .map(|a| a.1.map(|p| batch.find(p)))
        .collect();

    // The four statements touch disjoint rows, so they go out together, pipelined on the one
    // connection, instead of each waiting for the one before to come back.
    let started = std::time::Instant::now();
    futures::try_join!(
        async {
            match inserted.id.is_empty() {
                true => Ok(0),
                false => store::insert_profiles(tx, &inserted).await,
            }
        },
        async {
            match updated.id.is_empty() {
                true => Ok(0),
                false => store::update_profiles(tx, &updated).await,
            }
        },
        async {
            match kinds.is_empty() {
                true => Ok(0),
                false => {
                    store::insert_identities(tx, &kinds, &values, &owners, &sources, &seen).await
                }
            }
        },
        store::mark_resolved(tx, &seqs, &profiles),
    )?;
    let t_rows = started.elapsed();

    // After the profile inserts: a merge marks profiles this batch created as merged away.
    if !batch.merges.is_empty() {
        let losers: Vec<Uuid> = batch.merges.iter().map(|m| m.1).collect();
        let finals: Vec<Uuid> = losers.iter().map(|l| batch.find(*l)).collect();
        store::apply_merges(tx, &losers, &finals).await?;
        let winners: Vec<Uuid> = batch.merges.iter().map(|m| m.0).collect();
        let kinds: Vec<&str> = batch.merges.iter().map(|m| m.2.kind.as_str()).collect();
        let values: Vec<&str> = batch.merges.iter().map(|m| m.2.value.as_str()).collect();
        let seqs: Vec<i64> = batch.merges.iter().map(|m| m.3).collect();
        store::insert_merges(tx, &winners, &losers, &kinds, &values, &seqs).await?;
    }
    tracing::debug!(
        inserted = inserted.id.len(),
        updated = updated.id.len(),
        identities = n,
        rows_ms = t_rows.as_secs_f64() * 1e3,
        merges_ms = (started.elapsed() - t_rows).as_secs_f64() * 1e3,
        "wrote a batch"
    );
    Ok(())
}
