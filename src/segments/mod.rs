//! Segments: the definition language (pure, `definition.rs`), its compiler to DataFusion plans
//! (`compile.rs`), evaluation with membership written back as a diff, and the segments tables.

pub mod compile;
pub mod definition;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{SubsecRound, Utc};
use datafusion::arrow::array::{Array, StringArray};
use serde_json::Value;
use uuid::Uuid;

use crate::db::DbError;
use crate::query::{QueryEngine, QueryError};
use compile::Compiler;
use definition::{Condition, DefinitionError};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("invalid definition: {0}")]
    Definition(#[from] DefinitionError),
    #[error("invalid definition: {0}")]
    Invalid(String),
    #[error("no segment with id {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Query(QueryError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<QueryError> for SegmentError {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Plan(detail) => SegmentError::Invalid(detail),
            QueryError::Database(db) => SegmentError::Database(db),
            other => SegmentError::Query(other),
        }
    }
}

impl From<SegmentError> for crate::error::ApiError {
    fn from(err: SegmentError) -> Self {
        use crate::error::ApiError;
        match err {
            SegmentError::Definition(_) | SegmentError::Invalid(_) => {
                ApiError::BadRequest(err.to_string())
            }
            SegmentError::NotFound(_) => ApiError::NotFound(err.to_string()),
            SegmentError::Database(db) => db.into(),
            SegmentError::Query(q) => {
                ApiError::Internal(anyhow::Error::new(q).context("evaluating a segment"))
            }
        }
    }
}

/// All stored definitions, parsed (a stored definition that no longer parses is skipped).
async fn stored_definitions(
    engine: &QueryEngine,
) -> Result<HashMap<Uuid, Condition>, SegmentError> {
    let rows = store::definitions(engine.db()).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, def)| Condition::parse(&def).ok().map(|c| (id, c)))
        .collect())
}

/// Parses a definition and checks it against the other segments (references exist, no cycle) and
/// the snapshot (types, SQL). `own_id` is the segment being updated, if any.
pub async fn validate(
    engine: &QueryEngine,
    definition: &Value,
    own_id: Option<Uuid>,
) -> Result<(Condition, HashMap<Uuid, Condition>), SegmentError> {
    let condition = Condition::parse(definition)?;
    let mut others = stored_definitions(engine).await?;
    if let Some(id) = own_id {
        others.insert(id, condition.clone());
    }
    check_references(&condition, own_id, &others)?;
    engine.refresh().await?;
    let view = engine.view();
    Compiler::new(&view, Utc::now(), &others)
        .await?
        .members(&condition)?;
    Ok((condition, others))
}

fn check_references(
    condition: &Condition,
    own_id: Option<Uuid>,
    all: &HashMap<Uuid, Condition>,
) -> Result<(), SegmentError> {
    fn walk(
        c: &Condition,
        all: &HashMap<Uuid, Condition>,
        path: &mut Vec<Uuid>,
        done: &mut HashSet<Uuid>,
    ) -> Result<(), SegmentError> {
        for id in c.references() {
            if path.contains(&id) {
                return Err(SegmentError::Invalid(format!(
                    "segment references form a cycle through {id}"
                )));
            }
            if done.contains(&id) {
                continue;
            }
            let inner = all.get(&id).ok_or_else(|| {
                SegmentError::Invalid(format!("the referenced segment {id} does not exist"))
            })?;
            path.push(id);
            walk(inner, all, path, done)?;
            path.pop();
            done.insert(id);
        }
        Ok(())
    }
    let mut path: Vec<Uuid> = own_id.into_iter().collect();
    walk(condition, all, &mut path, &mut HashSet::new())
}

/// Matching profile ids of a condition over a fresh snapshot.
pub async fn matching(
    engine: &QueryEngine,
    condition: &Condition,
    segments: &HashMap<Uuid, Condition>,
) -> Result<Vec<Uuid>, SegmentError> {
    engine.refresh().await?;
    let view = engine.view();
    let batches = Compiler::new(&view, Utc::now(), segments)
        .await?
        .members(condition)?
        .collect()
        .await
        .map_err(QueryError::from)?;
    let mut ids = Vec::new();
    for batch in batches {
        let column = batch.column(0);
        let Some(strings) = column.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        for i in 0..strings.len() {
            if let Ok(id) = Uuid::parse_str(strings.value(i)) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Evaluates a stored segment now and writes the membership diff.
pub async fn evaluate(engine: &QueryEngine, id: Uuid) -> Result<store::Evaluation, SegmentError> {
    let started = Instant::now();
    let segment = store::get(engine.db(), id)
        .await?
        .ok_or(SegmentError::NotFound(id))?;
    let condition = Condition::parse(&segment.definition)?;
    let segments = stored_definitions(engine).await?;
    let members = matching(engine, &condition, &segments).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    // PostgreSQL keeps microseconds: answer with the time as stored.
    let now = Utc::now().trunc_subsecs(6);
    Ok(store::write_membership(engine.db(), id, &members, now, elapsed_ms).await?)
}
