//! The segments tables: definitions, memberships (written as diffs), evaluation history.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Db, DbError};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Segment {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_evaluated_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, name, description, definition, created_at, updated_at, last_evaluated_at";

fn segment(row: &tokio_postgres::Row) -> Segment {
    Segment {
        id: row.get(0),
        name: row.get(1),
        description: row.get(2),
        definition: row.get(3),
        created_at: row.get(4),
        updated_at: row.get(5),
        last_evaluated_at: row.get(6),
    }
}

pub async fn insert(
    db: &Db,
    name: &str,
    description: Option<&str>,
    definition: &Value,
) -> Result<Segment, DbError> {
    let sql = format!("INSERT INTO segments (id, name, description, definition) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}");
    let row = db
        .conn()
        .await?
        .query_one(&sql, &[&Uuid::now_v7(), &name, &description, definition])
        .await?;
    Ok(segment(&row))
}

pub async fn update(
    db: &Db,
    id: Uuid,
    name: &str,
    description: Option<&str>,
    definition: &Value,
) -> Result<Option<Segment>, DbError> {
    let sql = format!(
        "UPDATE segments SET name = $2, description = $3, definition = $4, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = db
        .conn()
        .await?
        .query_opt(&sql, &[&id, &name, &description, definition])
        .await?;
    Ok(row.as_ref().map(segment))
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Segment>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM segments WHERE id = $1");
    Ok(db
        .conn()
        .await?
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(segment))
}

pub async fn list(db: &Db, after: Option<Uuid>, limit: i64) -> Result<Vec<Segment>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM segments WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"
    );
    Ok(db
        .conn()
        .await?
        .query(&sql, &[&after, &limit])
        .await?
        .iter()
        .map(segment)
        .collect())
}

pub async fn delete(db: &Db, id: Uuid) -> Result<bool, DbError> {
    Ok(db
        .conn()
        .await?
        .execute("DELETE FROM segments WHERE id = $1", &[&id])
        .await?
        > 0)
}

/// Every segment's definition, for references between segments.
pub async fn definitions(db: &Db) -> Result<Vec<(Uuid, Value)>, DbError> {
    let rows = db
        .conn()
        .await?
        .query("SELECT id, definition FROM segments", &[])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    pub count: i64,
    pub entered: i64,
    pub exited: i64,
    pub elapsed_ms: f64,
    pub evaluated_at: DateTime<Utc>,
}

/// Replaces a segment's membership by `members`, writing only the difference (entered rows
/// get `evaluated_at`, kept rows keep their `entered_at`), the outbox of changes and the run.
pub async fn write_membership(
    db: &Db,
    segment_id: Uuid,
    members: &[Uuid],
    evaluated_at: DateTime<Utc>,
    elapsed_ms: f64,
) -> Result<Evaluation, DbError> {
    let mut client = db.conn().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "WITH now_in AS (SELECT DISTINCT unnest($2::uuid[]) AS profile_id),
                  entered AS (
                      INSERT INTO segment_members (segment_id, profile_id, entered_at)
                      SELECT $1, n.profile_id, $3 FROM now_in n JOIN profiles p ON p.id = n.profile_id
                      ON CONFLICT (segment_id, profile_id) DO NOTHING
                      RETURNING profile_id),
                  exited AS (
                      DELETE FROM segment_members m WHERE m.segment_id = $1
                        AND NOT EXISTS (SELECT 1 FROM now_in n WHERE n.profile_id = m.profile_id)
                      RETURNING profile_id),
                  outbox AS (
                      INSERT INTO segment_changes (segment_id, profile_id, change, at)
                      SELECT $1, profile_id, 'entered', $3 FROM entered
                      UNION ALL SELECT $1, profile_id, 'exited', $3 FROM exited)
             SELECT (SELECT count(*) FROM entered), (SELECT count(*) FROM exited)",
            &[&segment_id, &members, &evaluated_at],
        )
        .await?;
    let (entered, exited): (i64, i64) = (row.get(0), row.get(1));
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM segment_members WHERE segment_id = $1",
            &[&segment_id],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO segment_runs (segment_id, evaluated_at, members, entered, exited, elapsed_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&segment_id, &evaluated_at, &count, &entered, &exited, &elapsed_ms],
    )
    .await?;
    tx.execute(
        "UPDATE segments SET last_evaluated_at = $2 WHERE id = $1",
        &[&segment_id, &evaluated_at],
    )
    .await?;
    tx.commit().await?;
    Ok(Evaluation {
        count,
        entered,
        exited,
        elapsed_ms,
        evaluated_at,
    })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub profile_id: Uuid,
    pub entered_at: DateTime<Utc>,
}

pub async fn members(
    db: &Db,
    segment_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Member>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT profile_id, entered_at FROM segment_members
             WHERE segment_id = $1 AND ($2::uuid IS NULL OR profile_id > $2) ORDER BY profile_id LIMIT $3",
            &[&segment_id, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Member {
            profile_id: r.get(0),
            entered_at: r.get(1),
        })
        .collect())
}

pub async fn history(db: &Db, segment_id: Uuid) -> Result<Vec<Evaluation>, DbError> {
    let rows = db
        .conn()
        .await?
        .query(
            "SELECT members, entered, exited, elapsed_ms, evaluated_at FROM segment_runs
             WHERE segment_id = $1 ORDER BY evaluated_at, id",
            &[&segment_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Evaluation {
            count: r.get(0),
            entered: r.get(1),
            exited: r.get(2),
            elapsed_ms: r.get(3),
            evaluated_at: r.get(4),
        })
        .collect())
}
