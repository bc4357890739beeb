//! The `sources` table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{SourceAuth, SourceKind};
use crate::auth::SecretHash;
use crate::db::{Db, DbError};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Source {
    pub id: Uuid,
    pub name: String,
    pub kind: SourceKind,
    pub enabled: bool,
    /// The first characters of the write key.
    pub write_key_hint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, kind, enabled, write_key_hint, created_at, updated_at";

fn source(row: &tokio_postgres::Row) -> Source {
    let kind: String = row.get("kind");
    Source {
        id: row.get("id"),
        name: row.get("name"),
        kind: SourceKind::parse(&kind).unwrap_or(SourceKind::Other),
        enabled: row.get("enabled"),
        write_key_hint: row.get("write_key_hint"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

pub async fn insert(
    db: &Db,
    name: &str,
    kind: SourceKind,
    hash: &SecretHash,
    hint: &str,
) -> Result<Source, DbError> {
    let sql = format!(
        "INSERT INTO sources (id, name, kind, write_key_hash, write_key_hint) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    );
    let row = db
        .conn()
        .await?
        .query_one(
            &sql,
            &[
                &Uuid::now_v7(),
                &name,
                &kind.as_str(),
                &hash.as_slice(),
                &hint,
            ],
        )
        .await?;
    Ok(source(&row))
}

pub async fn list(db: &Db, after: Option<Uuid>, limit: i64) -> Result<Vec<Source>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sources WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR id > $1)
         ORDER BY id LIMIT $2"
    );
    let rows = db.conn().await?.query(&sql, &[&after, &limit]).await?;
    Ok(rows.iter().map(source).collect())
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Source>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM sources WHERE id = $1 AND deleted_at IS NULL");
    let row = db.conn().await?.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(source))
}

pub async fn update(
    db: &Db,
    id: Uuid,
    name: Option<&str>,
    enabled: Option<bool>,
) -> Result<Option<Source>, DbError> {
    let sql = format!(
        "UPDATE sources SET name = coalesce($2, name), enabled = coalesce($3, enabled), updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
    );
    let row = db
        .conn()
        .await?
        .query_opt(&sql, &[&id, &name, &enabled])
        .await?;
    Ok(row.as_ref().map(source))
}

/// Soft delete: the key stops working and the source leaves lists, but its events keep their
/// provenance.
pub async fn delete(db: &Db, id: Uuid) -> Result<bool, DbError> {
    let n = db
        .conn()
        .await?
        .execute(
            "UPDATE sources SET deleted_at = now(), enabled = false, updated_at = now()
             WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
    Ok(n > 0)
}

pub async fn find_by_write_key(db: &Db, hash: &SecretHash) -> Result<Option<SourceAuth>, DbError> {
    let row = db
        .conn()
        .await?
        .query_opt(
            "SELECT id, enabled AND deleted_at IS NULL AS enabled FROM sources WHERE write_key_hash = $1",
            &[&hash.as_slice()],
        )
        .await?;
    Ok(row.map(|row| SourceAuth {
        id: row.get("id"),
        enabled: row.get("enabled"),
    }))
}
