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
use crate::profiles::computed::ComputedTrait;
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

/// Everything a condition may refer to: other segments and computed traits.
#[derive(Default)]
pub struct Definitions {
    pub segments: HashMap<Uuid, Condition>,
    pub computed: HashMap<String, ComputedTrait>,
}

/// All stored definitions, parsed (a stored definition that no longer parses is skipped).
pub async fn definitions(engine: &QueryEngine) -> Result<Definitions, SegmentError> {
    let rows = store::definitions(engine.db()).await?;
    let segments = rows
        .into_iter()
        .filter_map(|(id, def)| Condition::parse(&def).ok().map(|c| (id, c)))
        .collect();
    let computed = crate::profiles::store::computed_traits(engine.db())
        .await?
        .into_iter()
        // A trait stored before a built-in of its name existed is shadowed by the built-in.
        .filter(|t| !crate::health::is_built_in(&t.name))
        .filter_map(|t| {
            ComputedTrait::parse(&t.definition)
                .ok()
                .map(|c| (t.name, c))
        })
        .collect();
    Ok(Definitions { segments, computed })
}

/// Parses a definition and checks it against the other segments (references exist, no cycle) and
/// the snapshot (types, SQL). `own_id` is the segment being updated, if any.
pub async fn validate(
    engine: &QueryEngine,
    definition: &Value,
    own_id: Option<Uuid>,
) -> Result<(Condition, Definitions), SegmentError> {
    let condition = Condition::parse(definition)?;
    let mut all = definitions(engine).await?;
    if let Some(id) = own_id {
        all.segments.insert(id, condition.clone());
    }
    check_references(&condition, own_id, &all.segments)?;
    engine.refresh().await?;
    let view = engine.view();
    compiler(engine, &view, &condition, &all)
        .await?
        .members(&condition)?;
    Ok((condition, all))
}

/// A compiler over `view` for `condition`, given the customer-health built-ins when the
/// condition (or a segment it references, or SQL over `computed`) may use them: they are
/// computed once per view, so conditions that never name one never wait for them.
async fn compiler<'a>(
    engine: &QueryEngine,
    view: &'a crate::query::View,
    condition: &Condition,
    all: &'a Definitions,
) -> Result<Compiler<'a>, SegmentError> {
    let compiler = Compiler::new(view, Utc::now(), &all.segments, &all.computed).await?;
    if !uses_built_ins(condition, &all.segments, 0) {
        return Ok(compiler);
    }
    let built_ins = crate::health::built_ins(engine, view).await?;
    Ok(compiler.with_built_ins(built_ins.per_profile(&view.ctx)?))
}

fn uses_built_ins(
    condition: &Condition,
    segments: &HashMap<Uuid, Condition>,
    depth: usize,
) -> bool {
    let mut uses = false;
    condition.visit(&mut |c| match c {
        Condition::Computed { name, .. } => uses |= crate::health::is_built_in(name),
        Condition::Sql(sql) => uses |= sql.to_ascii_lowercase().contains("computed"),
        Condition::Segment(id) if depth < 64 => {
            uses |= segments
                .get(id)
                .is_some_and(|inner| uses_built_ins(inner, segments, depth + 1))
        }
        _ => {}
    });
    uses
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
    all: &Definitions,
) -> Result<Vec<Uuid>, SegmentError> {
    engine.refresh().await?;
    let view = engine.view();
    let batches = compiler(engine, &view, condition, all)
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
    let all = definitions(engine).await?;
    let members = matching(engine, &condition, &all).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    // PostgreSQL keeps microseconds: answer with the time as stored.
    let now = Utc::now().trunc_subsecs(6);
    Ok(store::write_membership(engine.db(), id, &members, now, elapsed_ms).await?)
}

/// Recomputes every computed trait over a fresh snapshot and stores the values the profile API
/// shows. Returns how many profiles have at least one value.
pub async fn refresh_computed(engine: &QueryEngine) -> Result<usize, SegmentError> {
    use datafusion::arrow::array::{AsArray, ListArray};
    use datafusion::arrow::datatypes::{DataType, Float64Type};

    let all = definitions(engine).await?;
    engine.refresh().await?;
    let view = engine.view();
    let now = Utc::now();
    let events = view.ctx.table("events").await.map_err(QueryError::from)?;
    let mut values: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    let built_ins = crate::health::built_ins(engine, &view)
        .await?
        .per_profile(&view.ctx)?
        .collect()
        .await
        .map_err(QueryError::from)?;
    for (name, computed) in &all.computed {
        let batches = computed
            .aggregate(events.clone(), now)?
            .collect()
            .await
            .map_err(QueryError::from)?;
        for batch in batches {
            let ids = batch.column(0).as_string::<i32>();
            let column = batch.column(1);
            for row in 0..batch.num_rows() {
                if column.is_null(row) {
                    continue;
                }
                let value = match column.data_type() {
                    DataType::Float64 => serde_json::Number::from_f64(
                        column.as_primitive::<Float64Type>().value(row),
                    )
                    .map(Value::Number),
                    DataType::Utf8 => Some(Value::String(
                        column.as_string::<i32>().value(row).to_string(),
                    )),
                    DataType::List(_) => {
                        let list: &ListArray = column.as_list::<i32>();
                        let items = list.value(row);
                        let strings = items.as_string::<i32>();
                        Some(Value::Array(
                            (0..strings.len())
                                .filter(|i| !strings.is_null(*i))
                                .map(|i| Value::String(strings.value(i).to_string()))
                                .collect(),
                        ))
                    }
                    _ => None,
                };
                if let Some(value) = value {
                    values
                        .entry(ids.value(row).to_string())
                        .or_default()
                        .insert(name.clone(), value);
                }
            }
        }
    }
    // Every live profile has built-ins: walk them in order, adding each profile's declared
    // values, and build the JSON a chunk at a time as the writer asks for it.
    let mut rows = built_ins
        .iter()
        .flat_map(|batch| (0..batch.num_rows()).map(move |row| (batch, row)));
    let mut written = 0;
    let mut leftovers = false;
    let next = || {
        let (mut ids, mut objects) = (Vec::new(), Vec::new());
        for (batch, row) in rows.by_ref() {
            let Some((id, mut object)) = crate::health::json_row(batch, row) else {
                continue;
            };
            if let Some(declared) = values.remove(&id) {
                object.extend(declared);
            }
            if let Ok(id) = Uuid::parse_str(&id) {
                ids.push(id);
                objects.push(Value::Object(object));
            }
            if ids.len() == 10_000 {
                break;
            }
        }
        if ids.is_empty() && !leftovers {
            // Declared values of profiles the built-ins do not know (none are live).
            leftovers = true;
            for (id, object) in values.drain() {
                if let Ok(id) = Uuid::parse_str(&id) {
                    ids.push(id);
                    objects.push(Value::Object(object));
                }
            }
        }
        written += ids.len();
        (!ids.is_empty()).then_some((ids, objects))
    };
    crate::profiles::store::write_computed_chunks(engine.db(), now, next).await?;
    Ok(written)
}

/// Declares the computed traits of the configuration (they replace earlier config versions).
pub async fn declare_configured(
    engine: &QueryEngine,
    declared: &[Value],
) -> Result<(), SegmentError> {
    for definition in declared {
        let computed = ComputedTrait::parse(definition)?;
        if crate::health::is_built_in(&computed.name) {
            return Err(SegmentError::Invalid(format!(
                "the computed trait `{}` of the configuration has the name of a built-in",
                computed.name
            )));
        }
        crate::profiles::store::put_computed_trait(
            engine.db(),
            &computed.name,
            definition,
            "config",
        )
        .await?;
    }
    Ok(())
}

/// The schedule: every `every`, refresh computed values and evaluate every segment.
pub async fn run_schedule(
    engine: std::sync::Arc<QueryEngine>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(err) = refresh_computed(&engine).await {
            tracing::warn!(error = %err, "scheduled computed-trait refresh failed");
        }
        let ids = match store::definitions(engine.db()).await {
            Ok(rows) => rows.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
            Err(err) => {
                tracing::warn!(error = %err, "listing segments for the schedule failed");
                continue;
            }
        };
        for id in ids {
            match evaluate(&engine, id).await {
                Ok(run) => {
                    tracing::info!(segment = %id, members = run.count, entered = run.entered, exited = run.exited, "segment evaluated")
                }
                Err(err) => {
                    tracing::warn!(segment = %id, error = %err, "scheduled segment evaluation failed")
                }
            }
        }
    }
}
