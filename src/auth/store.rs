//! The `api_keys` table.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Principal, Scope, SecretHash};
use crate::db::{Db, DbError};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    /// The first characters of the token.
    pub token_hint: String,
    pub created_at: DateTime<Utc>,
}

fn api_key(row: &tokio_postgres::Row) -> ApiKey {
    ApiKey {
        id: row.get("id"),
        name: row.get("name"),
        scopes: row.get("scopes"),
        token_hint: row.get("token_hint"),
        created_at: row.get("created_at"),
    }
}

pub async fn insert(
    db: &Db,
    name: &str,
    scopes: &[Scope],
    hash: &SecretHash,
    hint: &str,
) -> Result<ApiKey, DbError> {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row = db
        .conn()
        .await?
        .query_one(
            "INSERT INTO api_keys (id, name, token_hash, token_hint, scopes) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, scopes, token_hint, created_at",
            &[&Uuid::now_v7(), &name, &hash.as_slice(), &hint, &scopes],
        )
        .await?;
    Ok(api_key(&row))
}

pub async fn list(db: &Db, after: Option<Uuid>, limit: i64) -> Result<Vec<ApiKey>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT id, name, scopes, token_hint, created_at FROM api_keys
             WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows.iter().map(api_key).collect())
}

pub async fn delete(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let n = db
        .conn()
        .await?
        .execute("DELETE FROM api_keys WHERE id = $1", &[&id])
        .await?;
    Ok(n > 0)
}

pub async fn find_by_hash(db: &Db, hash: &SecretHash) -> Result<Option<Principal>, DbError> {
    let row = db
        .conn()
        .await?
        .query_opt(
            "SELECT id, scopes FROM api_keys WHERE token_hash = $1",
            &[&hash.as_slice()],
        )
        .await?;
    Ok(row.map(|row| {
        let scopes: Vec<String> = row.get("scopes");
        Principal {
            key_id: Some(row.get("id")),
            scopes: Arc::new(scopes.iter().filter_map(|s| Scope::parse(s)).collect()),
        }
    }))
}
