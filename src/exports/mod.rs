//! Exports for BI tools: profiles, events and segment members as CSV, Parquet or NDJSON, planned
//! over the query layer's snapshot and streamed batch by batch (`execute_stream`), so memory
//! stays flat however many rows leave. `encode.rs` turns batches into bytes, `worker.rs` writes
//! file exports (and scheduled ones) atomically with a manifest, `store.rs` owns the `exports`
//! table. The columns are made for BI tools: identities and traits as typed columns, timestamps
//! as timestamps.

pub mod encode;
pub mod store;
pub mod worker;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::JoinType;
use datafusion::prelude::{col, lit, DataFrame};
use futures::{SinkExt, Stream, StreamExt};
use uuid::Uuid;

use crate::db::DbError;
use crate::query::snapshot::{utc_micros, IDENTITY_COLUMNS};
use crate::query::{QueryEngine, QueryError, View};
use crate::segments::SegmentError;
pub use encode::Format;
use encode::{EncodeError, Encoder, SLICE_ROWS};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request names something that does not exist or cannot be exported.
    #[error("{0}")]
    Invalid(String),
    #[error("no segment with id {0}")]
    SegmentNotFound(Uuid),
    #[error("no export with id {0}")]
    NotFound(Uuid),
    #[error(
        "segment {0} has never been evaluated, so it has no members to export yet; \
         evaluate it first (POST /v1/segments/{0}/evaluate) or wait for the schedule"
    )]
    NotEvaluated(Uuid),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("writing the export file: {0}")]
    Io(#[from] std::io::Error),
}

impl From<datafusion::error::DataFusionError> for ExportError {
    fn from(err: datafusion::error::DataFusionError) -> Self {
        ExportError::Query(QueryError::Engine(err))
    }
}

impl From<SegmentError> for ExportError {
    fn from(err: SegmentError) -> Self {
        match err {
            SegmentError::NotFound(id) => ExportError::SegmentNotFound(id),
            SegmentError::Database(db) => ExportError::Database(db),
            SegmentError::Query(q) => ExportError::Query(q),
            other => ExportError::Query(QueryError::Plan(other.to_string())),
        }
    }
}

impl From<ExportError> for crate::error::ApiError {
    fn from(err: ExportError) -> Self {
        use crate::error::ApiError;
        match err {
            ExportError::Invalid(_) => ApiError::BadRequest(err.to_string()),
            ExportError::SegmentNotFound(_) | ExportError::NotFound(_) => {
                ApiError::NotFound(err.to_string())
            }
            ExportError::NotEvaluated(_) => ApiError::Conflict(err.to_string()),
            ExportError::Database(db) => db.into(),
            other => ApiError::Internal(anyhow::Error::new(other).context("exporting")),
        }
    }
}

/// What an export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// Every live profile.
    Profiles,
    /// Every resolved event, optionally from `since` on.
    Events { since: Option<DateTime<Utc>> },
    /// The members of a segment as of its last evaluation, with their profile columns.
    Segment(Uuid),
}

impl What {
    /// The name used in file names, manifests and the `exports` table.
    pub fn name(&self) -> &'static str {
        match self {
            What::Profiles => "profiles",
            What::Events { .. } => "events",
            What::Segment(_) => "segment",
        }
    }

    /// Parses `{"what", "segment_id"}` of a file export; the error names the problem.
    pub fn parse(what: &str, segment_id: Option<Uuid>) -> Result<What, ExportError> {
        match (what, segment_id) {
            ("profiles", None) => Ok(What::Profiles),
            ("events", None) => Ok(What::Events { since: None }),
            ("segment", Some(id)) => Ok(What::Segment(id)),
            ("segment", None) => Err(ExportError::Invalid(
                "`segment_id` is required when `what` is \"segment\"".into(),
            )),
            ("profiles" | "events", Some(_)) => Err(ExportError::Invalid(format!(
                "`segment_id` only applies when `what` is \"segment\", not {what:?}"
            ))),
            _ => Err(ExportError::Invalid(format!(
                "unknown `what` {what:?}; expected profiles, events or segment"
            ))),
        }
    }
}

/// Parses `fields=a,b,c`: names, trimmed, in order, each once.
pub fn parse_fields(fields: Option<&str>) -> Result<Option<Vec<String>>, ExportError> {
    let Some(text) = fields else {
        return Ok(None);
    };
    let mut names: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(ExportError::Invalid(
                "`fields` must be a comma-separated list of column names, without empty names"
                    .into(),
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(Some(names))
}

/// A column name BI tools can type without quoting: letters, digits and `_`.
fn column_name(prefix: &str, name: &str, taken: &mut HashSet<String>) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let base = format!("{prefix}{clean}");
    let mut candidate = base.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{base}_{n}");
        n += 1;
    }
    candidate
}

/// Per-profile computed values as `(name, frame of (profile_id, value))`, one entry a column.
/// Every declared computed trait, computed fresh from the snapshot as segments see it, in name
/// order (the built-ins come from the view's cache instead).
fn computed_columns(
    events: &DataFrame,
    computed: &std::collections::HashMap<String, crate::profiles::computed::ComputedTrait>,
    now: DateTime<Utc>,
) -> Result<Vec<(String, DataFrame)>, ExportError> {
    let mut names: Vec<&String> = computed.keys().collect();
    names.sort();
    let mut columns = Vec::with_capacity(names.len());
    for name in names {
        columns.push((name.clone(), computed[name].aggregate(events.clone(), now)?));
    }
    Ok(columns)
}

/// One row a profile: `profile_id`, `email` / `user_id` / `phone`, `trait_<name>` typed as the
/// snapshot inferred, `traits` (all of them as JSON), `computed_<name>`, `event_count`,
/// `first_seen`, `last_seen`.
///
/// The customer-health built-ins are added only when they can be wanted (no `fields`, or a
/// `computed_` field). They are kept in the profiles table's row order, so their columns are
/// put beside the profiles' as they are (no join, no copy).
async fn profiles_frame(
    engine: &QueryEngine,
    view: &View,
    with_built_ins: bool,
) -> Result<DataFrame, ExportError> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut columns = vec![col("id").alias("profile_id")];
    taken.insert("profile_id".into());
    for kind in IDENTITY_COLUMNS {
        columns.push(col(kind));
        taken.insert(kind.to_string());
    }
    for fixed in [
        "traits",
        "event_count",
        "first_seen",
        "last_seen",
        "entered_at",
    ] {
        taken.insert(fixed.to_string());
    }
    // A trait named "" (a client may send one) has no column of its own: struct field access
    // refuses empty names. It stays in the `traits` JSON column.
    for name in view.trait_types.keys().filter(|name| !name.is_empty()) {
        let alias = column_name("trait_", name, &mut taken);
        columns.push(get_field(col("traits"), name.as_str()).alias(alias));
    }
    columns.push(col("traits_json").alias("traits"));
    columns.push(col("event_count"));
    columns.push(col("first_seen"));
    columns.push(col("last_seen"));

    let definitions = crate::segments::definitions(engine).await?;
    let mut declared: Vec<String> = definitions.computed.keys().cloned().collect();
    declared.sort();
    let declared: Vec<String> = declared
        .iter()
        .map(|name| column_name("computed_", name, &mut taken))
        .collect();
    let (profiles, built_in_columns) = if with_built_ins {
        // The customer-health built-ins (clv, nps_group, rfm, …): computed once per snapshot
        // view and shared with segments and the health report.
        let built_ins = crate::health::built_ins(engine, view).await?;
        let (table, names) = beside_profiles(view, built_ins.in_profile_order(), &mut taken)?;
        (view.ctx.read_table(table)?, names)
    } else {
        (view.ctx.table("profiles").await?, Vec::new())
    };
    columns.extend(built_in_columns.iter().map(|name| col(name.as_str())));
    let mut frame = profiles.select(columns)?;

    let events = view.ctx.table("events").await?;
    let computed = computed_columns(&events, &definitions.computed, Utc::now())?;
    for ((_, values), alias) in computed.into_iter().zip(&declared) {
        let values = values.select(vec![
            col("profile_id").alias(JOIN_KEY),
            col("value").alias(alias.as_str()),
        ])?;
        frame = join_on_profile(frame, values, JoinType::Left)?;
    }
    if !built_in_columns.is_empty() && !declared.is_empty() {
        // Declared computed traits first, then the built-ins, as before.
        let order: Vec<_> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|name| !built_in_columns.contains(name))
            .chain(built_in_columns.iter().cloned())
            .map(|name| col(name.as_str()))
            .collect();
        frame = frame.select(order)?;
    }
    Ok(frame)
}

/// The view's profiles table with the built-ins' columns (named `computed_<name>`) beside its
/// own: both follow the same row order, so the arrays are shared as they are (the profiles'
/// sliced to the built-ins' batches).
fn beside_profiles(
    view: &View,
    built_ins: &[RecordBatch],
    taken: &mut HashSet<String>,
) -> Result<(Arc<MemTable>, Vec<String>), ExportError> {
    let profiles = &view.profiles_batch;
    let rows: usize = built_ins.iter().map(RecordBatch::num_rows).sum();
    if rows != profiles.num_rows() {
        return Err(ExportError::Query(QueryError::Plan(format!(
            "the health built-ins hold {rows} rows for {} profiles",
            profiles.num_rows()
        ))));
    }
    let mut fields: Vec<Field> = profiles
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut names = Vec::new();
    let mut built_in_columns = Vec::new();
    if let Some(first) = built_ins.first() {
        for (i, field) in first.schema().fields().iter().enumerate() {
            if field.name() != "profile_id" {
                let name = column_name("computed_", field.name(), taken);
                fields.push(Field::new(&name, field.data_type().clone(), true));
                names.push(name);
                built_in_columns.push(i);
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::with_capacity(built_ins.len());
    let mut offset = 0;
    for batch in built_ins {
        let mut columns = profiles.slice(offset, batch.num_rows()).columns().to_vec();
        columns.extend(built_in_columns.iter().map(|i| batch.column(*i).clone()));
        batches.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(datafusion::error::DataFusionError::from)?,
        );
        offset += batch.num_rows();
    }
    let table = MemTable::try_new(schema, vec![batches])?;
    Ok((Arc::new(table), names))
}

/// The key column a frame joined to the profiles carries (dropped after the join).
const JOIN_KEY: &str = "__profile";

/// `frame` (keyed by `profile_id`) joined with `values` (keyed by `JOIN_KEY`).
fn join_on_profile(
    frame: DataFrame,
    values: DataFrame,
    how: JoinType,
) -> Result<DataFrame, ExportError> {
    Ok(frame
        .join(values, how, &["profile_id"], &[JOIN_KEY], None)?
        .drop_columns(&[JOIN_KEY])?)
}

/// One row an event: `profile_id` (the survivor's), `type`, `event`, `ts`, `properties` (JSON).
async fn events_frame(view: &View, since: Option<DateTime<Utc>>) -> Result<DataFrame, ExportError> {
    let mut events = view.ctx.table("events").await?.select(vec![
        col("profile_id"),
        col("type"),
        col("event"),
        col("ts"),
        col("properties"),
    ])?;
    if let Some(since) = since {
        events = events.filter(col("ts").gt_eq(lit(
            datafusion::scalar::ScalarValue::TimestampMicrosecond(
                Some(since.timestamp_micros()),
                Some("UTC".into()),
            ),
        )))?;
    }
    Ok(events)
}

/// The members of an evaluated segment with their profile columns and `entered_at`.
async fn segment_frame(
    engine: &QueryEngine,
    view: &View,
    id: Uuid,
    with_built_ins: bool,
) -> Result<DataFrame, ExportError> {
    let segment = crate::segments::store::get(engine.db(), id)
        .await?
        .ok_or(ExportError::SegmentNotFound(id))?;
    if segment.last_evaluated_at.is_none() {
        return Err(ExportError::NotEvaluated(id));
    }
    let members = crate::segments::store::members(engine.db(), id, None, i64::MAX).await?;
    let mut profile = StringBuilder::with_capacity(members.len(), members.len() * 36);
    let mut entered =
        TimestampMicrosecondBuilder::with_capacity(members.len()).with_timezone("UTC");
    for m in &members {
        profile.append_value(m.profile_id.to_string());
        entered.append_value(m.entered_at.timestamp_micros());
    }
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(
                JOIN_KEY,
                datafusion::arrow::datatypes::DataType::Utf8,
                false,
            ),
            Field::new("entered_at", utc_micros(), false),
        ])),
        vec![Arc::new(profile.finish()), Arc::new(entered.finish())],
    )
    .map_err(datafusion::error::DataFusionError::from)?;
    let members = view.ctx.read_batch(batch)?;
    join_on_profile(
        profiles_frame(engine, view, with_built_ins).await?,
        members,
        JoinType::Inner,
    )
}

/// Plans an export over a fresh snapshot, keeping only `fields` (in their order) when given.
pub async fn plan(
    engine: &QueryEngine,
    what: &What,
    fields: Option<&[String]>,
) -> Result<DataFrame, ExportError> {
    engine.refresh().await?;
    let view = engine.view();
    let with_built_ins =
        fields.is_none_or(|fields| fields.iter().any(|f| f.starts_with("computed_")));
    let frame = match what {
        What::Profiles => profiles_frame(engine, &view, with_built_ins).await?,
        What::Events { since } => events_frame(&view, *since).await?,
        What::Segment(id) => segment_frame(engine, &view, *id, with_built_ins).await?,
    };
    let Some(fields) = fields else {
        return Ok(frame);
    };
    let available: Vec<&str> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    if let Some(unknown) = fields.iter().find(|f| !available.contains(&f.as_str())) {
        return Err(ExportError::Invalid(format!(
            "unknown field {unknown:?} in `fields`; this export has: {}",
            available.join(", ")
        )));
    }
    Ok(frame.select(
        fields
            .iter()
            .map(|f| col(format!("\"{f}\"")))
            .collect::<Vec<_>>(),
    )?)
}

/// Plans and starts an export; batches come as the engine produces them.
pub async fn open(
    engine: &QueryEngine,
    what: &What,
    fields: Option<&[String]>,
) -> Result<SendableRecordBatchStream, ExportError> {
    let started = std::time::Instant::now();
    let frame = plan(engine, what, fields).await?;
    let planned = started.elapsed();
    let stream = frame.execute_stream().await?;
    tracing::debug!(
        export = what.name(),
        planned_ms = planned.as_secs_f64() * 1e3,
        started_ms = started.elapsed().as_secs_f64() * 1e3,
        "export started"
    );
    Ok(stream)
}

/// An export's encoded bytes, chunk by chunk: each batch from the engine is cut into slices of
/// at most `SLICE_ROWS` rows and encoded, so buffers stay small however big a batch is.
pub struct Chunks {
    stream: SendableRecordBatchStream,
    encoder: Option<Encoder>,
    batch: Option<RecordBatch>,
    offset: usize,
    rows: u64,
    schema: SchemaRef,
}

impl Chunks {
    pub fn new(stream: SendableRecordBatchStream, format: Format) -> Result<Chunks, ExportError> {
        let schema = stream.schema();
        Ok(Chunks {
            encoder: Some(Encoder::new(format, schema.clone())?),
            stream,
            batch: None,
            offset: 0,
            rows: 0,
            schema,
        })
    }

    /// Rows encoded so far (all of them once `next` has answered `None`).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The next bytes to write, or `None` once the export is complete.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ExportError> {
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Ok(None);
            };
            if let Some(batch) = &self.batch {
                if self.offset < batch.num_rows() {
                    let len = SLICE_ROWS.min(batch.num_rows() - self.offset);
                    let slice = batch.slice(self.offset, len);
                    self.offset += len;
                    self.rows += len as u64;
                    let bytes = encoder.encode(&slice)?;
                    if !bytes.is_empty() {
                        return Ok(Some(bytes));
                    }
                    continue;
                }
            }
            match self.stream.next().await {
                Some(batch) => {
                    self.batch = Some(batch?);
                    self.offset = 0;
                }
                None => {
                    self.batch = None;
                    if let Some(encoder) = self.encoder.take() {
                        let tail = encoder.finish()?;
                        if !tail.is_empty() {
                            return Ok(Some(tail));
                        }
                    }
                }
            }
        }
    }
}

/// The encoded bytes of a started export. Encoding is CPU work, so it runs on a blocking thread
/// (an HTTP worker stays free for other requests, and its bytes are written while the next
/// ones are encoded), a few chunks ahead of the reader: back-pressure keeps memory flat. A
/// failure after the first bytes ends the stream with an error, so the client sees a broken
/// transfer rather than a short file.
pub fn encoded(mut chunks: Chunks) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            loop {
                match chunks.next().await {
                    Ok(Some(bytes)) => {
                        if tx.send(Ok(bytes)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    Ok(None) => return,
                    Err(err) => {
                        tracing::error!(error = %err, "a streamed export failed part-way");
                        let _ = tx
                            .send(Err(std::io::Error::other(format!("export failed: {err}"))))
                            .await;
                        return;
                    }
                }
            }
        })
    });
    rx
}

/// The suggested file name of a streamed export: `profiles-20260101T120000Z.parquet`.
pub fn file_name(what: &What, format: Format, at: DateTime<Utc>) -> String {
    let stem = match what {
        What::Segment(id) => format!("segment-{id}"),
        other => other.name().to_string(),
    };
    format!("{stem}-{}.{}", at.format("%Y%m%dT%H%M%SZ"), format.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_names_become_plain_unique_column_names() {
        let mut taken: HashSet<String> = ["trait_a_b".to_string()].into();
        assert_eq!(
            column_name("trait_", "address.city", &mut taken),
            "trait_address_city"
        );
        assert_eq!(column_name("trait_", "a.b", &mut taken), "trait_a_b_2");
        assert_eq!(column_name("trait_", "a b", &mut taken), "trait_a_b_3");
    }

    #[test]
    fn fields_are_trimmed_kept_in_order_and_never_empty() {
        assert_eq!(
            parse_fields(Some(" email, profile_id ,email")).unwrap(),
            Some(vec!["email".to_string(), "profile_id".to_string()])
        );
        assert!(parse_fields(Some("email,,plan")).is_err());
        assert_eq!(parse_fields(None).unwrap(), None);
    }

    #[test]
    fn a_file_export_names_what_it_holds_never_anything_else() {
        assert!(What::parse("../../etc/passwd", None).is_err());
        assert!(What::parse("segment", None).is_err());
        assert!(What::parse("profiles", Some(Uuid::nil())).is_err());
        assert_eq!(What::parse("profiles", None).unwrap(), What::Profiles);
    }
}
