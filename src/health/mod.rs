//! Customer health: the built-in computed traits every profile has (`clv`, `orders`,
//! `avg_order_value`, `last_order_at`, `nps_score`, `nps_group`, `csat_score`,
//! `first_response_minutes`, `days_since_last_seen`, `churn_risk`, `rfm` and its three scores,
//! `loyalty_tier`) and the population report over them (`report.rs`). The built-ins are computed
//! over the query layer's snapshot once per snapshot view: the view holds them, so every segment,
//! report and export on that view reuses one computation and a refresh (a new view) starts
//! afresh. They read the snapshot's `health_facts` (`facts.rs`: the typed values of order,
//! refund, survey and ticket events, extracted once as events are read), never the events' JSON:
//! tickets are paired and the population-wide figures derived in DataFusion, the per-profile
//! sums are one pass over the typed fact columns (`facts::per_profile`). Event and property
//! names come from `[health]`.

pub mod facts;
mod gaps;
pub mod report;
pub mod settings;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::functions::core::expr_fn::greatest;
use datafusion::functions::expr_fn::concat;
use datafusion::functions_aggregate::expr_fn::{min, sum};
use datafusion::logical_expr::{cast, not, when, Expr, ExprFunctionExt};
use datafusion::prelude::{col, lit, DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;

use crate::query::{dealt, QueryEngine, QueryError, View};
pub use settings::HealthSettings;

/// The built-in computed traits and what their values are, for type-checking segment
/// conditions (numbers compare as numbers, the rest as text).
pub const BUILT_INS: [(&str, BuiltInKind); 15] = [
    ("clv", BuiltInKind::Number),
    ("orders", BuiltInKind::Number),
    ("avg_order_value", BuiltInKind::Number),
    ("last_order_at", BuiltInKind::Time),
    ("nps_score", BuiltInKind::Number),
    ("nps_group", BuiltInKind::Text),
    ("csat_score", BuiltInKind::Number),
    ("first_response_minutes", BuiltInKind::Number),
    ("days_since_last_seen", BuiltInKind::Number),
    ("churn_risk", BuiltInKind::Text),
    ("rfm", BuiltInKind::Text),
    ("rfm_recency", BuiltInKind::Number),
    ("rfm_frequency", BuiltInKind::Number),
    ("rfm_monetary", BuiltInKind::Number),
    ("loyalty_tier", BuiltInKind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltInKind {
    Number,
    Text,
    /// A timestamp, compared with RFC 3339 text.
    Time,
}

/// The type a segment condition compares a built-in with, or `None` for other names.
pub fn built_in_type(name: &str) -> Option<DataType> {
    BUILT_INS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, kind)| match kind {
            BuiltInKind::Number => DataType::Float64,
            BuiltInKind::Text | BuiltInKind::Time => DataType::Utf8,
        })
}

pub fn is_built_in(name: &str) -> bool {
    built_in_type(name).is_some()
}

const MICROS_PER_MINUTE: f64 = 60_000_000.0;

/// The built-ins of one snapshot view, materialized: one row per live profile, in the order of
/// the view's `profiles` table, and one row per answered ticket (for the population's median
/// response time).
pub struct BuiltIns {
    pub computed_at: DateTime<Utc>,
    in_profile_order: Vec<RecordBatch>,
    profiles: Arc<MemTable>,
    tickets: Arc<MemTable>,
}

impl BuiltIns {
    /// `profile_id` and one column per built-in (null where a profile has no value).
    pub fn per_profile(&self, ctx: &SessionContext) -> Result<DataFrame, QueryError> {
        Ok(ctx.read_table(self.profiles.clone())?)
    }

    /// The same rows in batches that, end to end, follow the view's `profiles` table row for
    /// row, so their columns can stand beside the profiles' without a join.
    pub fn in_profile_order(&self) -> &[RecordBatch] {
        &self.in_profile_order
    }

    /// `(profile_id, minutes)` of every answered ticket.
    pub fn tickets(&self, ctx: &SessionContext) -> Result<DataFrame, QueryError> {
        Ok(ctx.read_table(self.tickets.clone())?)
    }
}

/// The built-ins of `view`, computed on first use and reused until the view is replaced or
/// `max_age_secs` pass (days since last seen and churn risk move on with the clock).
pub async fn built_ins(engine: &QueryEngine, view: &View) -> Result<Arc<BuiltIns>, QueryError> {
    let settings = engine.health_settings();
    let mut slot = view.health.lock().await;
    if let Some(cached) = slot.as_ref() {
        let age = Utc::now() - cached.computed_at;
        if age.num_seconds() < settings.max_age_secs as i64 {
            return Ok(cached.clone());
        }
    }
    let started = std::time::Instant::now();
    let computed = Arc::new(compute(view, settings, Utc::now()).await?);
    tracing::debug!(
        profiles = view.profiles,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "customer-health built-ins computed"
    );
    *slot = Some(computed.clone());
    Ok(computed)
}

fn micros(column: &str) -> Expr {
    cast(col(column), DataType::Int64)
}

fn null_text() -> Expr {
    lit(ScalarValue::Utf8(None))
}

/// Counts boolean rows that hold (a null counts as not holding).
fn rows_where(condition: Expr) -> Expr {
    sum(cast(condition, DataType::Int64))
}

async fn compute(
    view: &View,
    s: &HealthSettings,
    now: DateTime<Utc>,
) -> Result<BuiltIns, QueryError> {
    let ctx = &view.ctx;
    // Order values, refunds, survey answers and ticket ids were extracted as the snapshot read
    // the events (`facts.rs`): no event's JSON is parsed here.
    let facts = ctx.table("health_facts").await?;
    let partitions = ctx.state().config().target_partitions().max(1);

    // Tickets: minutes from opening to the first response, per answered ticket.
    let tickets = facts
        .clone()
        .filter(col("ticket").is_not_null())?
        .select(vec![
            col("profile_id"),
            col("ticket"),
            col("ticket_opens").alias("opens"),
            micros("ts").alias("t"),
        ])?
        .aggregate(
            vec![col("profile_id"), col("ticket")],
            vec![
                min(col("t")).filter(col("opens")).build()?.alias("opened"),
                min(col("t"))
                    .filter(not(col("opens")))
                    .build()?
                    .alias("answered"),
            ],
        )?
        .filter(
            col("opened")
                .is_not_null()
                .and(col("answered").is_not_null()),
        )?
        .select(vec![
            col("profile_id"),
            (cast(
                greatest(vec![col("answered") - col("opened"), lit(0i64)]),
                DataType::Float64,
            ) / lit(MICROS_PER_MINUTE))
            .alias("minutes"),
        ])?;
    let started = std::time::Instant::now();
    let ticket_schema = Arc::new(tickets.schema().as_arrow().clone());
    let answered = tickets.collect().await?;
    let tickets = dealt(answered.clone(), partitions, ticket_schema)?;
    let tickets_ms = started.elapsed().as_secs_f64() * 1e3;

    // Everything else a profile's built-ins need, in one pass over the typed facts.
    let started = std::time::Instant::now();
    let (profiles, health_facts) = (view.profiles_batch.clone(), view.health_facts.clone());
    // CPU-bound for a while at a million profiles: off the async workers.
    let raw = tokio::task::spawn_blocking(move || {
        facts::per_profile(&profiles, &health_facts, &answered, now.timestamp_micros())
    })
    .await
    .map_err(|e| QueryError::Engine(datafusion::error::DataFusionError::External(Box::new(e))))?
    .map_err(arrow)?;
    let raw_schema = raw.schema();
    let per_profile_ms = started.elapsed().as_secs_f64() * 1e3;

    // RFM scores rank each buyer against every other: one sort per figure over the figure's
    // column alone (a window function would carry every column through each sort).
    let scores = [
        // Recency: fewer days since the last order is better.
        quintiles(&raw, "order_days", true)?,
        quintiles(&raw, "orders", false)?,
        quintiles(&raw, "clv", false)?,
    ];
    let mut fields: Vec<_> = raw_schema.fields().iter().cloned().collect();
    let mut columns = raw.columns().to_vec();
    for (name, score) in ["rfm_recency", "rfm_frequency", "rfm_monetary"]
        .into_iter()
        .zip(scores)
    {
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
            name,
            DataType::Int64,
            true,
        )));
        columns.push(Arc::new(score));
    }
    let scored_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
    let scored = RecordBatch::try_new(scored_schema.clone(), columns).map_err(arrow)?;
    // Slices of 64k rows: the CASE expressions below build their branches per batch, so small
    // batches keep that scratch memory small.
    let scored = ctx.read_table(dealt(
        slices(&scored, SLICE_ROWS),
        partitions,
        scored_schema,
    )?)?;
    let is_buyer = col("orders").is_not_null();

    let [low, medium, high] = s.churn_risk_multiples;
    let interval = when(
        col("gap_days").is_null(),
        lit(s.one_time_buyer_interval_days),
    )
    .otherwise(greatest(vec![col("gap_days"), lit(1.0)]))?;
    let overdue = cast(col("order_days"), DataType::Float64) / interval;
    let churn = when(col("orders").is_null(), null_text())
        .when(overdue.clone().gt_eq(lit(high)), lit("high"))
        .when(overdue.clone().gt_eq(lit(medium)), lit("medium"))
        .when(overdue.gt_eq(lit(low)), lit("low"))
        .otherwise(lit("none"))?;
    let tiers = s.tiers_descending();
    let tier = match tiers.split_first() {
        None => null_text(),
        Some(((name, from), rest)) => {
            let mut case = when(col("clv").gt_eq(lit(*from)), lit(*name));
            for (name, from) in rest {
                case = case.when(col("clv").gt_eq(lit(*from)), lit(*name));
            }
            case.end()?
        }
    };
    let nps_group = when(col("nps_score").gt_eq(lit(9i64)), lit("promoter"))
        .when(col("nps_score").gt_eq(lit(7i64)), lit("passive"))
        .when(col("nps_score").gt_eq(lit(0i64)), lit("detractor"))
        .end()?;
    let code = when(
        is_buyer,
        concat(vec![
            cast(col("rfm_recency"), DataType::Utf8),
            cast(col("rfm_frequency"), DataType::Utf8),
            cast(col("rfm_monetary"), DataType::Utf8),
        ]),
    )
    .end()?;
    let done = scored.select(vec![
        col("profile_id"),
        col("clv"),
        col("orders"),
        col("avg_order_value"),
        col("last_order_at"),
        col("nps_score"),
        nps_group.alias("nps_group"),
        col("csat_score"),
        col("first_response_minutes"),
        col("days_since_last_seen"),
        churn.alias("churn_risk"),
        code.alias("rfm"),
        col("rfm_recency"),
        col("rfm_frequency"),
        col("rfm_monetary"),
        tier.alias("loyalty_tier"),
        col("pos"),
    ])?;
    let started = std::time::Instant::now();
    let schema: SchemaRef = Arc::new(done.schema().as_arrow().clone());
    // Each partition keeps its slices' row order: the batches only need putting back in turn.
    let batches: Vec<RecordBatch> = done
        .collect_partitioned()
        .await?
        .into_iter()
        .flatten()
        .collect();
    let in_profile_order = match in_turn(batches.clone(), view.profiles)? {
        Some(in_turn) => in_turn,
        None => {
            tracing::debug!("health built-ins came back out of turn; reordering them by row");
            vec![by_position(&schema, &batches, view.profiles)?]
        }
    };
    drop(batches);
    let schema = in_profile_order
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| without_pos(&schema));
    tracing::debug!(
        tickets_ms,
        per_profile_ms,
        population_ms = started.elapsed().as_secs_f64() * 1e3,
        "customer-health built-in phases"
    );
    Ok(BuiltIns {
        computed_at: now,
        profiles: dealt(in_profile_order.clone(), partitions, schema)?,
        in_profile_order,
        tickets,
    })
}

/// `batches` put back in profile order without copying a row, when each holds a run of
/// consecutive `pos` and together they cover `0..n` (`None` otherwise); without `pos`.
fn in_turn(batches: Vec<RecordBatch>, n: usize) -> Result<Option<Vec<RecordBatch>>, QueryError> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::datatypes::Int64Type;
    let mut runs = Vec::with_capacity(batches.len());
    for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
        let at = batch.schema().index_of("pos").map_err(arrow)?;
        let pos = batch.column(at).as_primitive::<Int64Type>();
        let first = pos.value(0);
        let consecutive = pos.null_count() == 0
            && pos
                .values()
                .iter()
                .zip(first..)
                .all(|(p, expected)| *p == expected);
        if !consecutive {
            return Ok(None);
        }
        let keep: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != at).collect();
        runs.push((first, batch.project(&keep).map_err(arrow)?));
    }
    runs.sort_unstable_by_key(|(first, _)| *first);
    let mut next = 0i64;
    for (first, batch) in &runs {
        if *first != next {
            return Ok(None);
        }
        next += batch.num_rows() as i64;
    }
    Ok((next == n as i64).then(|| runs.into_iter().map(|(_, b)| b).collect()))
}

/// `schema` without its `pos` column.
fn without_pos(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != "pos")
        .cloned()
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

/// `batches` (rows carrying `pos`, each of `0..n` once) as one batch with row `pos` at
/// position `pos`, without the `pos` column.
fn by_position(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    n: usize,
) -> Result<RecordBatch, QueryError> {
    use datafusion::arrow::array::{Array, UInt32Array};
    use datafusion::arrow::compute::{concat_batches, take};
    use datafusion::arrow::datatypes::{Int64Type, Schema};
    let all = concat_batches(schema, batches).map_err(arrow)?;
    let internal =
        |what: String| QueryError::Engine(datafusion::error::DataFusionError::Internal(what));
    let at = schema.index_of("pos").map_err(arrow)?;
    let positions = all.column(at).as_primitive::<Int64Type>();
    if all.num_rows() != n || positions.null_count() > 0 {
        return Err(internal(format!(
            "health built-ins: {} rows for {n} profiles",
            all.num_rows()
        )));
    }
    let mut order = vec![u32::MAX; n];
    for (row, pos) in positions.values().iter().enumerate() {
        match order.get_mut(*pos as usize) {
            Some(slot) if *slot == u32::MAX => *slot = row as u32,
            _ => return Err(internal(format!("health built-ins: bad profile row {pos}"))),
        }
    }
    let order = UInt32Array::from(order);
    let mut fields = Vec::with_capacity(schema.fields().len() - 1);
    let mut columns = Vec::with_capacity(fields.capacity());
    for (i, (field, column)) in schema.fields().iter().zip(all.columns()).enumerate() {
        if i != at {
            fields.push(field.clone());
            columns.push(take(column, &order, None).map_err(arrow)?);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow)
}

/// The 1–5 quintile of each row's `column` among the rows that have a value (null for the
/// others): quintile = 1 + ⌊5 × (rank − 1) / n⌋, where rank is 1 + the number of rows with a
/// strictly worse value, so tied rows share a rank and a quintile.
fn quintiles(
    batch: &RecordBatch,
    column: &str,
    lower_is_better: bool,
) -> Result<datafusion::arrow::array::Int64Array, QueryError> {
    use datafusion::arrow::array::{Array, Int64Array};
    let values = batch
        .column_by_name(column)
        .map(|c| datafusion::arrow::compute::cast(c, &DataType::Float64))
        .transpose()
        .map_err(arrow)?
        .ok_or_else(|| {
            QueryError::Engine(datafusion::error::DataFusionError::Internal(format!(
                "no column {column} to score"
            )))
        })?;
    let values = values.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    // Worst first.
    let mut order: Vec<(f64, usize)> = (0..values.len())
        .filter(|i| values.is_valid(*i))
        .map(|i| {
            let v = values.value(i);
            (if lower_is_better { -v } else { v }, i)
        })
        .collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n = order.len().max(1) as f64;
    let mut out: Vec<Option<i64>> = vec![None; values.len()];
    let mut first_of_tie = 0;
    for (position, (value, row)) in order.iter().enumerate() {
        if *value != order[first_of_tie].0 {
            first_of_tie = position;
        }
        out[*row] = Some(1 + (5.0 * first_of_tie as f64 / n).floor() as i64);
    }
    Ok(Int64Array::from(out))
}

fn arrow(err: datafusion::arrow::error::ArrowError) -> QueryError {
    QueryError::Engine(err.into())
}

const SLICE_ROWS: usize = 65_536;

/// `batch` cut into zero-copy slices of `size` rows.
fn slices(batch: &RecordBatch, size: usize) -> Vec<RecordBatch> {
    let size = size.max(1);
    (0..batch.num_rows())
        .step_by(size)
        .map(|start| batch.slice(start, size.min(batch.num_rows() - start)))
        .collect()
}

/// The profile id of row `row` of a `per_profile` batch and its non-null built-ins as the
/// profile API shows them: whole numbers as integers, times as RFC 3339 text.
pub fn json_row(
    batch: &RecordBatch,
    row: usize,
) -> Option<(String, serde_json::Map<String, serde_json::Value>)> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::datatypes::{
        Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    };
    use serde_json::Value;

    let id = batch
        .column_by_name("profile_id")?
        .as_string_opt::<i32>()?
        .value(row)
        .to_string();
    let mut object = serde_json::Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.name() == "profile_id" || column.is_null(row) {
            continue;
        }
        let value = match column.data_type() {
            DataType::Float64 => {
                serde_json::Number::from_f64(column.as_primitive::<Float64Type>().value(row))
                    .map(Value::Number)
            }
            DataType::Int64 => Some(Value::from(column.as_primitive::<Int64Type>().value(row))),
            DataType::Utf8 => Some(Value::String(
                column.as_string::<i32>().value(row).to_string(),
            )),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
                DateTime::<Utc>::from_timestamp_micros(micros)
                    .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
            }
            _ => None,
        };
        if let Some(value) = value {
            object.insert(field.name().clone(), value);
        }
    }
    Some((id, object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn scores(values: Vec<Option<f64>>, lower_is_better: bool) -> Vec<Option<i64>> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(values))]).unwrap();
        let q: Int64Array = quintiles(&batch, "v", lower_is_better).unwrap();
        (0..q.len())
            .map(|i| q.is_valid(i).then(|| q.value(i)))
            .collect()
    }

    #[test]
    fn five_distinct_values_fill_the_five_quintiles() {
        let got = scores(
            vec![Some(30.0), Some(10.0), Some(50.0), Some(20.0), Some(40.0)],
            false,
        );
        assert_eq!(got, vec![Some(3), Some(1), Some(5), Some(2), Some(4)]);
    }

    #[test]
    fn ties_share_the_quintile_of_the_first_of_them() {
        let got = scores(
            vec![Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(2.0)],
            false,
        );
        assert_eq!(got, vec![Some(1), Some(1), Some(1), Some(1), Some(5)]);
        // Ten customers, the middle four tied: they straddle no boundary.
        let values = [1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 8.0, 9.0, 10.0];
        let got = scores(values.iter().copied().map(Some).collect(), false);
        let expected = [1, 1, 2, 2, 2, 2, 2, 4, 5, 5];
        assert_eq!(got, expected.iter().map(|q| Some(*q)).collect::<Vec<_>>());
    }

    #[test]
    fn recency_scores_the_fewest_days_highest_and_skips_non_customers() {
        let got = scores(vec![Some(100.0), None, Some(1.0)], true);
        // Two customers: the worst ranks 1 → quintile 1, the best ranks 2 → 1 + ⌊5 × 1 / 2⌋.
        assert_eq!(got, vec![Some(1), None, Some(3)]);
    }
}
