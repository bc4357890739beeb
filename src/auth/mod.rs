//! Who is calling: the bootstrap admin token, API keys with scopes (admin API, §2) and the
//! secrets behind them. Secrets are random, shown once, stored only as SHA-256 and compared in
//! constant time; lookups by hash are cached briefly so authentication costs no round trip.

pub mod store;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::startup::AppState;

/// What an API key may do. `admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Scope {
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "profiles:read")]
    ProfilesRead,
    #[serde(rename = "segments:read")]
    SegmentsRead,
    #[serde(rename = "segments:write")]
    SegmentsWrite,
    #[serde(rename = "exports:read")]
    ExportsRead,
    #[serde(rename = "privacy:write")]
    PrivacyWrite,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Admin,
        Scope::ProfilesRead,
        Scope::SegmentsRead,
        Scope::SegmentsWrite,
        Scope::ExportsRead,
        Scope::PrivacyWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::ProfilesRead => "profiles:read",
            Scope::SegmentsRead => "segments:read",
            Scope::SegmentsWrite => "segments:write",
            Scope::ExportsRead => "exports:read",
            Scope::PrivacyWrite => "privacy:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// An authenticated caller of the bearer-token API.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The API key used; `None` for the bootstrap admin token.
    pub key_id: Option<Uuid>,
    pub scopes: Arc<Vec<Scope>>,
}

impl Principal {
    /// `403` unless the caller holds `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self
            .scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
        {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

pub type SecretHash = [u8; 32];

pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new random secret: `prefix` then 32 characters of [A-Za-z0-9] (~190 bits).
pub fn new_secret(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{body}")
}

/// What people see of a secret in lists: its prefix and first characters.
pub fn hint(secret: &str) -> String {
    format!("{}…", secret.chars().take(8).collect::<String>())
}

/// A small time-bounded cache of lookups by secret hash. Entries are dropped on change
/// (`invalidate`) by this instance and expire after `ttl` for changes made by others.
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: RwLock<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        entries.insert(key, (value, Instant::now()));
    }

    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Resolves bearer tokens to principals.
pub struct Authenticator {
    admin_token_hash: Option<SecretHash>,
    keys: TtlCache<SecretHash, Option<Principal>>,
}

impl Authenticator {
    pub fn new(admin_token: &str, ttl: Duration) -> Self {
        Authenticator {
            admin_token_hash: (!admin_token.is_empty()).then(|| hash_secret(admin_token)),
            keys: TtlCache::new(ttl),
        }
    }

    /// Forget cached keys (after a key is deleted).
    pub fn invalidate(&self) {
        self.keys.clear();
    }

    pub async fn authenticate(
        &self,
        db: &crate::db::Db,
        token: &str,
    ) -> Result<Principal, ApiError> {
        let hash = hash_secret(token);
        if let Some(admin) = &self.admin_token_hash {
            if bool::from(admin.ct_eq(&hash)) {
                return Ok(Principal {
                    key_id: None,
                    scopes: Arc::new(vec![Scope::Admin]),
                });
            }
        }
        let principal = match self.keys.get(&hash) {
            Some(cached) => cached,
            None => {
                let found = db.timed(store::find_by_hash(db, &hash)).await?;
                self.keys.insert(hash, found.clone());
                found
            }
        };
        principal.ok_or_else(|| ApiError::Unauthorized("unknown API token".into()))
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer_token(req).map(str::to_owned);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no app state")))?;
            let token = token.ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".into())
            })?;
            state.auth.authenticate(&state.db, &token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope_and_others_only_themselves() {
        let admin = Principal {
            key_id: None,
            scopes: Arc::new(vec![Scope::Admin]),
        };
        let reader = Principal {
            key_id: None,
            scopes: Arc::new(vec![Scope::ProfilesRead]),
        };
        for scope in Scope::ALL {
            assert!(admin.require(scope).is_ok());
        }
        assert!(reader.require(Scope::ProfilesRead).is_ok());
        assert!(reader.require(Scope::SegmentsWrite).is_err());
    }

    #[test]
    fn secrets_are_random_and_scopes_round_trip() {
        assert_ne!(new_secret("kz_"), new_secret("kz_"));
        assert_eq!(new_secret("wk_").len(), 35);
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }
}
