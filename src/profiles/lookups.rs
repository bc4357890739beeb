//! Profile lookups by identifier, answered together: lookups that arrive while earlier ones are
//! being read from the database wait, and the next statement reads all of them at once.
//!
//! A lookup is one indexed read, and most of what PostgreSQL spends on it is the statement, not
//! the rows: waking a backend, starting the executor, the protocol round trip. Four lookups in
//! one statement cost about as much machine time as two alone (BENCHMARKS.md). Nothing waits on
//! purpose: with no statement in flight a lookup goes at once, so a light load sees the latency
//! of a single read, and under a heavy one the statements grow with the queue and each lookup
//! gets cheaper just when the machine is busiest.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::store::{
    pending_with, profile, Read, PROFILE_FIELDS, PROFILE_FIELD_COUNT, PROFILE_KEYS,
};
use crate::db::{Db, DbError};
use crate::identity::on_read::Backlog;

/// Statements in flight at once; lookups beyond them queue for the next statement. One: at
/// 5,000 lookups/s two in flight left almost every statement with a single lookup, one gathers
/// three to four (BENCHMARKS.md), and the statement grows with the load.
const MAX_IN_FLIGHT: usize = 1;
/// Lookups one statement reads at most.
const MAX_BATCH: usize = 256;
/// Lookups that may wait; beyond them a lookup is shed at once (503), as requests waiting for a
/// pooled connection are.
const MAX_QUEUED: usize = 4 * MAX_BATCH;

/// Each queued identifier, numbered by its place in the arrays, joined to its profile, with an
/// empty list of pending events: what is resolved (while no backlog may exist).
static RESOLVED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {PROFILE_FIELDS}, q.n, '{{}}'::int8[]
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(kind, value, n)
         JOIN identities x ON x.kind = q.kind AND x.value = q.value
         JOIN profiles p ON p.id = x.profile_id"
    )
});
/// The same with the pending events that carry the identifier or one of the profile's, and a
/// row for every identifier: one no profile holds yet may be in a pending message. Kept apart,
/// as the outer joins make PostgreSQL plan the statement afresh on every run (its generic plan
/// looks costlier than one for the actual arrays), which doubled its CPU a lookup.
static WITH_PENDING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {PROFILE_FIELDS}, q.n, {}
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(kind, value, n)
         LEFT JOIN identities x ON x.kind = q.kind AND x.value = q.value
         LEFT JOIN profiles p ON p.id = x.profile_id",
        pending_with(&format!("SELECT q.kind, q.value UNION {PROFILE_KEYS}"))
    )
});

type Answer = Result<Read, DbError>;

struct Waiting {
    kind: String,
    value: String,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Line {
    queue: Vec<Waiting>,
    in_flight: usize,
}

/// The lookups of one server (shared by its threads).
pub struct Lookups {
    line: Mutex<Line>,
    backlog: Arc<Backlog>,
}

impl Lookups {
    pub fn new(backlog: Arc<Backlog>) -> Self {
        Lookups {
            line: Mutex::default(),
            backlog,
        }
    }

    /// The profile holding the normalized identifier `(kind, value)`, if any, and the pending
    /// events it would miss.
    pub async fn get(self: &Arc<Self>, db: &Db, kind: String, value: String) -> Answer {
        // No identifier holds a NUL (PostgreSQL text cannot), and such a value would fail the
        // statement the other lookups share.
        if kind.contains('\0') || value.contains('\0') {
            return Ok(Read {
                profile: None,
                pending: Vec::new(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut line = self.line();
            if line.queue.len() >= MAX_QUEUED {
                return Err(DbError::Saturated(line.queue.len()));
            }
            line.queue.push(Waiting { kind, value, reply });
            (line.in_flight < MAX_IN_FLIGHT).then(|| {
                line.in_flight += 1;
                take(&mut line.queue)
            })
        };
        if let Some(batch) = lead {
            // Its own task: a caller that goes away (a closed connection, a request past its
            // time limit) must not take the other callers' answers with it.
            tokio::spawn(Slot::held(self.clone(), db.clone()).drive(batch));
        }
        answer.await.unwrap_or_else(|_| {
            Err(DbError::Unavailable(
                "the lookup was abandoned before it was answered".into(),
            ))
        })
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch, keeping the statement slot; or, with nothing queued, the slot given back.
    fn next_or_release(&self) -> Option<Vec<Waiting>> {
        let mut line = self.line();
        if line.queue.is_empty() {
            line.in_flight -= 1;
            None
        } else {
            Some(take(&mut line.queue))
        }
    }
}

/// A statement slot, held by the task that reads the queue. Should that task end without giving
/// it back (a panic, or a runtime shutting down before it ran), the lookups queued behind it get
/// a new task, or the slot is freed.
struct Slot {
    lookups: Arc<Lookups>,
    db: Db,
    held: bool,
}

impl Slot {
    fn held(lookups: Arc<Lookups>, db: Db) -> Slot {
        Slot {
            lookups,
            db,
            held: true,
        }
    }

    /// Reads `batch`, then whatever queued meanwhile, until the queue is empty.
    async fn drive(mut self, mut batch: Vec<Waiting>) {
        loop {
            read(&self.db, batch, self.lookups.backlog.may_exist()).await;
            // Seeing the queue empty and giving the slot back happen under one lock: a lookup
            // queued in between would otherwise find the slot taken and wait for no one.
            match self.lookups.next_or_release() {
                Some(next) => batch = next,
                None => {
                    self.held = false;
                    return;
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let Some(batch) = self.lookups.next_or_release() else {
            return;
        };
        let slot = Slot::held(self.lookups.clone(), self.db.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(slot.drive(batch))),
            // No runtime to read on: the batch's callers are told their lookup was abandoned,
            // and the slot is given back when `slot` drops with the queue empty.
            Err(_) => drop((slot, batch)),
        }
    }
}

/// The oldest `MAX_BATCH` waiting lookups.
fn take(queue: &mut Vec<Waiting>) -> Vec<Waiting> {
    if queue.len() <= MAX_BATCH {
        std::mem::take(queue)
    } else {
        queue.drain(..MAX_BATCH).collect()
    }
}

/// Answers every lookup of `batch` from one statement; `pending`: looking for pending events.
async fn read(db: &Db, batch: Vec<Waiting>, pending: bool) {
    let kinds: Vec<&str> = batch.iter().map(|w| w.kind.as_str()).collect();
    let values: Vec<&str> = batch.iter().map(|w| w.value.as_str()).collect();
    let rows = db
        .timed(async {
            let client = db.conn().await?;
            let sql: &str = if pending { &WITH_PENDING } else { &RESOLVED };
            let statement = client.prepare_cached(sql).await?;
            Ok(client.query(&statement, &[&kinds, &values]).await?)
        })
        .await;
    let mut answers: Vec<Read> = batch
        .iter()
        .map(|_| Read {
            profile: None,
            pending: Vec::new(),
        })
        .collect();
    let failure = match rows {
        Ok(rows) => {
            for row in &rows {
                // `q.n` and the pending events follow the profile's fields, which are all null
                // where no profile holds the identifier.
                let n: i64 = row.get(PROFILE_FIELD_COUNT);
                let found: Option<uuid::Uuid> = row.get(0);
                answers[n as usize - 1] = Read {
                    profile: found.map(|_| profile(row)),
                    pending: row.get(PROFILE_FIELD_COUNT + 1),
                };
            }
            None
        }
        Err(e) => Some(e),
    };
    for (waiting, answer) in batch.into_iter().zip(answers) {
        let answer = match &failure {
            None => Ok(answer),
            Some(e) => Err(e.for_each_caller()),
        };
        // A caller that went away no longer listens; nothing to do about it.
        let _ = waiting.reply.send(answer);
    }
}
