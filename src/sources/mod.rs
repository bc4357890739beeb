//! Sources: the channels that send events (web, mobile, support desk, email, point of sale, …),
//! each with its own write key. Only the key's hash is stored; the key is shown once at creation.

pub mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{hash_secret, SecretHash, TtlCache};
use crate::db::Db;
use crate::error::ApiError;

/// The channel a source stands for; the timeline shows it beside each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Web,
    Mobile,
    Server,
    Support,
    Email,
    Pos,
    Social,
    Crm,
    Other,
}

impl SourceKind {
    pub const ALL: [SourceKind; 9] = [
        SourceKind::Web,
        SourceKind::Mobile,
        SourceKind::Server,
        SourceKind::Support,
        SourceKind::Email,
        SourceKind::Pos,
        SourceKind::Social,
        SourceKind::Crm,
        SourceKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Web => "web",
            SourceKind::Mobile => "mobile",
            SourceKind::Server => "server",
            SourceKind::Support => "support",
            SourceKind::Email => "email",
            SourceKind::Pos => "pos",
            SourceKind::Social => "social",
            SourceKind::Crm => "crm",
            SourceKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Result<SourceKind, ApiError> {
        SourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = SourceKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::BadRequest(format!(
                    "`kind` must be one of {}; got {s:?}",
                    known.join(", ")
                ))
            })
    }
}

/// The source a write key authenticates, as ingestion needs it.
#[derive(Debug, Clone)]
pub struct SourceAuth {
    pub id: Uuid,
    pub enabled: bool,
}

/// Write key → source, cached briefly. Disabling or deleting a source through this instance
/// takes effect at once; through another instance within the cache TTL.
pub struct WriteKeys {
    cache: TtlCache<SecretHash, Option<SourceAuth>>,
}

impl WriteKeys {
    pub fn new(ttl: Duration) -> Self {
        WriteKeys {
            cache: TtlCache::new(ttl),
        }
    }

    pub fn invalidate(&self) {
        self.cache.clear();
    }

    /// The enabled source behind `write_key`, or `401` naming what is wrong.
    pub async fn authenticate(&self, db: &Db, write_key: &str) -> Result<SourceAuth, ApiError> {
        let hash = hash_secret(write_key);
        let found = match self.cache.get(&hash) {
            Some(found) => found,
            None => {
                let found = db.timed(store::find_by_write_key(db, &hash)).await?;
                self.cache.insert(hash, found.clone());
                found
            }
        };
        match found {
            None => Err(ApiError::Unauthorized("unknown write key".into())),
            Some(source) if !source.enabled => {
                Err(ApiError::Unauthorized("this source is disabled".into()))
            }
            Some(source) => Ok(source),
        }
    }
}
