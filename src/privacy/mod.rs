//! Privacy (API.md §7): erasing a person — the profile, every profile merged into it, their
//! identities, traits, events, memberships, computed values and merge lineage, in one
//! transaction — and the suppression list that keeps their identifiers from coming back. The
//! list stores only SHA-256 hashes of `kind:normalized value`; ingest holds the set in memory and
//! drops messages carrying a suppressed identifier before they are stored; the resolver sweeps
//! what slipped past that check.

pub mod store;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::identity::store::PendingEvent;
use crate::identity::{Identifier, IdentityRules};
use crate::ingest::message::Message;

/// Taken exclusively by an erasure and shared by each resolver batch, so an erasure never
/// interleaves with a batch that read the profiles it deletes.
pub const ERASURE_LOCK: i64 = 0x6b697a_65726173; // "kiz" "eras"

/// How long this instance trusts its suppression set before asking whether another instance
/// changed the list (changes made here apply at once).
const RECHECK: Duration = Duration::from_secs(1);

pub type IdentifierHash = [u8; 32];

/// The hash a suppressed identifier is kept as.
pub fn identifier_hash(kind: &str, value: &str) -> IdentifierHash {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update(b":");
    hasher.update(value.as_bytes());
    hasher.finalize().into()
}

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error("no profile with id {0}")]
    UnknownProfile(Uuid),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<tokio_postgres::Error> for PrivacyError {
    fn from(err: tokio_postgres::Error) -> Self {
        PrivacyError::Database(DbError::Query(err))
    }
}

impl From<PrivacyError> for crate::error::ApiError {
    fn from(err: PrivacyError) -> Self {
        match err {
            PrivacyError::UnknownProfile(_) => crate::error::ApiError::NotFound(err.to_string()),
            PrivacyError::Database(db) => db.into(),
        }
    }
}

/// What an erasure removed. The identifiers are returned (not stored anywhere) so that callers
/// can clean up what lives outside PostgreSQL, e.g. files an export wrote.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The live profile the request named (directly or through a merged-away id).
    pub profile_id: Uuid,
    /// It and every profile merged into it.
    pub profile_ids: Vec<Uuid>,
    pub identifiers: Vec<Identifier>,
    /// When the earliest of them was first seen: no file written before it can hold them.
    pub first_seen: chrono::DateTime<chrono::Utc>,
    pub deleted: store::Deleted,
    /// Identifiers newly put on the suppression list.
    pub suppressed: u64,
}

/// Erases the person `id` stands for (a merged-away id erases its survivor) and suppresses
/// their identifiers, in one transaction.
pub async fn erase(db: &Db, rules: &IdentityRules, id: Uuid) -> Result<Erasure, PrivacyError> {
    let mut client = db.conn().await?;
    let tx = client.transaction().await?;
    store::lock_out_resolution(&tx, ERASURE_LOCK).await?;
    let (profile_id, profile_ids) = store::family(&tx, id)
        .await?
        .ok_or(PrivacyError::UnknownProfile(id))?;
    let identifiers: Vec<Identifier> = store::identifiers(&tx, &profile_ids)
        .await?
        .into_iter()
        .map(|(kind, value)| Identifier { kind, value })
        .collect();
    let hashes: Vec<IdentifierHash> = identifiers
        .iter()
        .map(|i| identifier_hash(&i.kind, &i.value))
        .collect();

    // Events not resolved yet would otherwise build the person again from their identifiers.
    let pending = crate::identity::store::pending_events(&tx, i64::MAX, &[]).await?;
    let carrying: Vec<i64> = pending
        .iter()
        .filter(|e| pending_hashes(e, rules).iter().any(|h| hashes.contains(h)))
        .map(|e| e.seq)
        .collect();

    let first_seen = store::earliest_seen(&tx, &profile_ids).await?;
    let deleted = store::delete_profiles(&tx, &profile_ids, &carrying).await?;
    let kinds: Vec<&str> = identifiers.iter().map(|i| i.kind.as_str()).collect();
    let hash_values: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
    let suppressed = store::suppress(&tx, &kinds, &hash_values, "erasure").await?;
    tx.commit().await?;
    Ok(Erasure {
        profile_id,
        profile_ids,
        first_seen,
        identifiers,
        deleted,
        suppressed,
    })
}

/// The hashes of every identifier a pending event carries, read both ways an alias can be.
fn pending_hashes(event: &PendingEvent, rules: &IdentityRules) -> Vec<IdentifierHash> {
    rules
        .extract_either(|previous_kind| event.ids(previous_kind))
        .iter()
        .map(|i| identifier_hash(&i.kind, &i.value))
        .collect()
}

/// The resolver's backstop behind ingest's in-memory check (which may be a moment stale, or
/// have raced an erasure): inside the resolver's transaction, after the erasure lock, events
/// carrying a suppressed identifier are deleted instead of resolved. Costs one small query a
/// batch while the list is empty, and one index lookup more when it is not.
pub async fn sweep_pending(
    tx: &impl tokio_postgres::GenericClient,
    rules: &IdentityRules,
    events: Vec<PendingEvent>,
) -> Result<(Vec<PendingEvent>, usize), tokio_postgres::Error> {
    if !store::any_suppressed(tx).await? {
        return Ok((events, 0));
    }
    let carried: Vec<Vec<IdentifierHash>> =
        events.iter().map(|e| pending_hashes(e, rules)).collect();
    let all: Vec<Vec<u8>> = carried
        .iter()
        .flatten()
        .collect::<HashSet<_>>()
        .into_iter()
        .map(|h| h.to_vec())
        .collect();
    let suppressed: HashSet<Vec<u8>> = store::suppressed_among(tx, &all)
        .await?
        .into_iter()
        .collect();
    if suppressed.is_empty() {
        return Ok((events, 0));
    }
    let (mut kept, mut dropped) = (Vec::with_capacity(events.len()), Vec::new());
    for (event, hashes) in events.into_iter().zip(&carried) {
        if hashes.iter().any(|h| suppressed.contains(h.as_slice())) {
            dropped.push(event.seq);
        } else {
            kept.push(event);
        }
    }
    store::delete_events(tx, &dropped).await?;
    Ok((kept, dropped.len()))
}

struct Loaded {
    epoch: Option<i64>,
    hashes: Arc<HashSet<IdentifierHash>>,
    checked_at: Option<Instant>,
}

/// The suppression list as a set of hashes in memory. It is reloaded when the privacy epoch
/// moves: at once after a change through this instance, within `RECHECK` after one elsewhere.
pub struct Suppressions {
    loaded: RwLock<Loaded>,
    reload: tokio::sync::Mutex<()>,
}

impl Default for Suppressions {
    fn default() -> Self {
        Suppressions {
            loaded: RwLock::new(Loaded {
                epoch: None,
                hashes: Arc::default(),
                checked_at: None,
            }),
            reload: tokio::sync::Mutex::new(()),
        }
    }
}

impl Suppressions {
    /// Makes the next `current` ask the database.
    pub fn invalidate(&self) {
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .checked_at = None;
    }

    fn fresh(&self) -> Option<Arc<HashSet<IdentifierHash>>> {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        loaded
            .checked_at
            .filter(|at| at.elapsed() < RECHECK)
            .map(|_| loaded.hashes.clone())
    }

    /// The current set: one cheap query at most every `RECHECK`, a full load only on change.
    pub async fn current(&self, db: &Db) -> Result<Arc<HashSet<IdentifierHash>>, DbError> {
        if let Some(hashes) = self.fresh() {
            return Ok(hashes);
        }
        let _one_at_a_time = self.reload.lock().await;
        if let Some(hashes) = self.fresh() {
            return Ok(hashes);
        }
        let epoch = store::epoch(&**db.conn().await?).await?;
        let known = self.loaded.read().unwrap_or_else(|e| e.into_inner()).epoch;
        let hashes = if known == Some(epoch) {
            self.loaded
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .hashes
                .clone()
        } else {
            let hashes: HashSet<IdentifierHash> = store::hashes(db)
                .await?
                .into_iter()
                .filter_map(|h| h.try_into().ok())
                .collect();
            Arc::new(hashes)
        };
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Loaded {
            epoch: Some(epoch),
            hashes: hashes.clone(),
            checked_at: Some(Instant::now()),
        };
        Ok(hashes)
    }
}

/// Whether a message carries a suppressed identifier, read as identity resolution would read it
/// (an alias's `previousId` either as a user id or as an anonymous id).
pub fn is_suppressed(
    message: &Message,
    rules: &IdentityRules,
    suppressed: &HashSet<IdentifierHash>,
) -> bool {
    rules
        .extract_either(|previous_kind| message.ids(previous_kind))
        .iter()
        .any(|i| suppressed.contains(&identifier_hash(&i.kind, &i.value)))
}
