//! The `exports` table: file exports requested over the API or by the schedule, and what the
//! worker reported about each.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Db, DbError};

/// A file export as `GET /v1/exports/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileExport {
    pub id: Uuid,
    /// `profiles`, `events` or `segment`.
    pub what: String,
    /// `csv`, `parquet` or `ndjson`.
    pub format: String,
    pub segment_id: Option<Uuid>,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// Why it failed (or was removed), when it did.
    pub reason: Option<String>,
    /// The data file, relative to the export directory (`<id>/<what>.<format>`), once done.
    pub file: Option<String>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, what, format, segment_id, status, reason, file, rows, bytes, sha256, \
                       created_at, started_at, finished_at";

fn from_row(row: &tokio_postgres::Row) -> FileExport {
    FileExport {
        id: row.get(0),
        what: row.get(1),
        format: row.get(2),
        segment_id: row.get(3),
        status: row.get(4),
        reason: row.get(5),
        file: row.get(6),
        rows: row.get(7),
        bytes: row.get(8),
        sha256: row.get(9),
        created_at: row.get(10),
        started_at: row.get(11),
        finished_at: row.get(12),
    }
}

pub async fn insert(
    db: &Db,
    what: &str,
    format: &str,
    segment_id: Option<Uuid>,
) -> Result<FileExport, DbError> {
    let sql = format!(
        "INSERT INTO exports (id, what, format, segment_id) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    );
    let row = db
        .conn()
        .await?
        .query_one(&sql, &[&Uuid::now_v7(), &what, &format, &segment_id])
        .await?;
    Ok(from_row(&row))
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<FileExport>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM exports WHERE id = $1");
    let row = db.conn().await?.query_opt(&sql, &[&id]).await?;
    Ok(row.as_ref().map(from_row))
}

/// Takes the oldest pending export and marks it running (several workers never take the same).
/// An export still `running` an hour after it started was left by a process that died (one
/// takes seconds): it is taken again.
pub async fn claim_next(db: &Db) -> Result<Option<FileExport>, DbError> {
    let sql = format!(
        "UPDATE exports SET status = 'running', started_at = now()
         WHERE id = (SELECT id FROM exports
                     WHERE status = 'pending'
                        OR (status = 'running' AND started_at < now() - interval '1 hour')
                     ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
         RETURNING {COLUMNS}"
    );
    let row = db.conn().await?.query_opt(&sql, &[]).await?;
    Ok(row.as_ref().map(from_row))
}

pub async fn finish_done(
    db: &Db,
    id: Uuid,
    file: &str,
    rows: i64,
    bytes: i64,
    sha256: &str,
) -> Result<(), DbError> {
    db.conn()
        .await?
        .execute(
            "UPDATE exports SET status = 'done', file = $2, rows = $3, bytes = $4, sha256 = $5,
                                finished_at = now(), reason = NULL
             WHERE id = $1",
            &[&id, &file, &rows, &bytes, &sha256],
        )
        .await?;
    Ok(())
}

pub async fn finish_failed(db: &Db, id: Uuid, reason: &str) -> Result<(), DbError> {
    db.conn()
        .await?
        .execute(
            "UPDATE exports SET status = 'failed', reason = $2, finished_at = now() WHERE id = $1",
            &[&id, &reason],
        )
        .await?;
    Ok(())
}

/// Done exports finished at or after `since`: their files may hold a person seen since then.
pub async fn done_since(db: &Db, since: DateTime<Utc>) -> Result<Vec<Uuid>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT id FROM exports WHERE status = 'done' AND finished_at >= $1",
            &[&since],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records that an export's files were removed, and why.
pub async fn mark_removed(db: &Db, ids: &[Uuid], reason: &str) -> Result<(), DbError> {
    db.conn()
        .await?
        .execute(
            "UPDATE exports SET status = 'failed', reason = $2, file = NULL WHERE id = ANY($1)",
            &[&ids, &reason],
        )
        .await?;
    Ok(())
}
