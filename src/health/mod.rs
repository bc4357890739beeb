//! Customer health: the built-in computed traits every profile has (`clv`, `orders`,
//! `avg_order_value`, `last_order_at`, `nps_score`, `nps_group`, `csat_score`,
//! `first_response_minutes`, `days_since_last_seen`, `churn_risk`, `rfm` and its three scores,
//! `loyalty_tier`) and the population report over them (`report.rs`). The built-ins are planned
//! in DataFusion over the query layer's snapshot and computed once per snapshot view: the view
//! holds them, so every segment, report and export on that view reuses one computation and a
//! refresh (a new view) starts afresh. Event and property names come from `[health]`.

pub mod report;
pub mod settings;
mod udf;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::functions::core::expr_fn::greatest;
use datafusion::functions::expr_fn::{coalesce, concat, lower};
use datafusion::functions::math::expr_fn::{floor, round};
use datafusion::functions_aggregate::expr_fn::{array_agg, count, max, median, min, sum};
use datafusion::functions_aggregate::first_last::last_value_udaf;
use datafusion::logical_expr::{cast, not, when, Expr, ExprFunctionExt};
use datafusion::prelude::{col, lit, DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;

use crate::query::{json, QueryEngine, QueryError, View};
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

const MICROS_PER_DAY: f64 = 86_400_000_000.0;
const MICROS_PER_MINUTE: f64 = 60_000_000.0;

/// The built-ins of one snapshot view, materialized: one row per live profile, and one row per
/// answered ticket (for the population's median response time).
pub struct BuiltIns {
    pub computed_at: DateTime<Utc>,
    profiles: Arc<MemTable>,
    tickets: Arc<MemTable>,
}

impl BuiltIns {
    /// `profile_id` and one column per built-in (null where a profile has no value).
    pub fn per_profile(&self, ctx: &SessionContext) -> Result<DataFrame, QueryError> {
        Ok(ctx.read_table(self.profiles.clone())?)
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

/// The per-profile built-ins over the current snapshot view, keyed by `profile_id` (for
/// exports: join it to profiles on `profile_id`). Call `QueryEngine::refresh` first for fresh data.
pub async fn per_profile(engine: &QueryEngine) -> Result<DataFrame, QueryError> {
    let view = engine.view();
    built_ins(engine, &view).await?.per_profile(&view.ctx)
}

fn micros(column: &str) -> Expr {
    cast(col(column), DataType::Int64)
}

/// Whole days from `column` (a timestamp) to `now`.
fn days_since(column: &str, now: DateTime<Utc>) -> Expr {
    let elapsed = cast(
        lit(now.timestamp_micros()) - micros(column),
        DataType::Float64,
    );
    cast(floor(elapsed / lit(MICROS_PER_DAY)), DataType::Int64)
}

fn null_text() -> Expr {
    lit(ScalarValue::Utf8(None))
}

/// The columns of a fact row, in order; a fact leaves null what it does not carry.
const FACT_TIMES: [&str; 3] = ["last_seen", "order_ts", "answered_at"];
const FACT_COLUMNS: [&str; 9] = [
    "profile_id",
    "last_seen",
    "order_ts",
    "amount",
    "refund",
    "answered_at",
    "nps",
    "csat",
    "minutes",
];

/// `frame` as fact rows: each column of `FACT_COLUMNS` from `given`, else a typed null.
fn fact_rows(frame: DataFrame, given: Vec<(&str, Expr)>) -> Result<DataFrame, QueryError> {
    let mut given: HashMap<&str, Expr> = given.into_iter().collect();
    let columns = FACT_COLUMNS
        .iter()
        .map(|&name| {
            let value = given.remove(name).unwrap_or_else(|| {
                if FACT_TIMES.contains(&name) {
                    lit(ScalarValue::TimestampMicrosecond(None, Some("UTC".into())))
                } else {
                    lit(ScalarValue::Float64(None))
                }
            });
            value.alias(name)
        })
        .collect::<Vec<_>>();
    Ok(frame.select(columns)?)
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
    let events = ctx.table("events").await?;
    let profiles = ctx.table("profiles").await?;
    let partitions = ctx.state().config().target_partitions().max(1);

    // Tickets: minutes from opening to the first response, per answered ticket.
    // Equalities rather than IN: a short OR of them is cheaper than hashing every event name.
    let ticket_event = s.ticket_response_events.iter().fold(
        col("event").eq(lit(s.ticket_created_event.as_str())),
        |any, e| any.or(col("event").eq(lit(e.as_str()))),
    );
    let tickets = events
        .clone()
        .filter(ticket_event)?
        .select(vec![
            col("profile_id"),
            crate::query::json::pick_text(col("properties"), &s.ticket_id_property).alias("ticket"),
            col("event")
                .eq(lit(s.ticket_created_event.as_str()))
                .alias("opens"),
            micros("ts").alias("t"),
        ])?
        .filter(col("ticket").is_not_null())?
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
    let tickets = table(tickets.collect().await?, partitions, ticket_schema)?;
    let tickets_ms = started.elapsed().as_secs_f64() * 1e3;

    // Every fact about a profile becomes one row of the same shape (profile rows carry
    // `last_seen`, orders `order_ts` and `amount`, …), so one aggregate by profile gathers them
    // all: no join of a million profiles with each kind of event.
    let facts_of_profiles = fact_rows(
        profiles,
        vec![("profile_id", col("id")), ("last_seen", col("last_seen"))],
    )?;
    let facts_of_tickets = fact_rows(
        ctx.read_table(tickets.clone())?,
        vec![
            ("profile_id", col("profile_id")),
            ("minutes", col("minutes")),
        ],
    )?;
    // Each kind of event is its own branch, so each event's JSON is read once, for the
    // properties its kind has.
    let of_event = |event: &str| events.clone().filter(col("event").eq(lit(event)));
    let value = || json::pick_number(col("properties"), &s.order_value_properties);
    let facts_of_orders = fact_rows(
        of_event(&s.order_event)?,
        vec![
            ("profile_id", col("profile_id")),
            ("order_ts", col("ts")),
            // An order without a value still counts as an order, worth nothing.
            ("amount", coalesce(vec![value(), lit(0.0)])),
        ],
    )?;
    let facts_of_refunds = fact_rows(
        of_event(&s.refund_event)?,
        vec![("profile_id", col("profile_id")), ("refund", value())],
    )?;
    let answer = |name: &str, low: f64, high: f64| -> Result<Expr, QueryError> {
        Ok(when(
            col("survey")
                .eq(lit(name.to_lowercase()))
                .and(col("score").between(lit(low), lit(high))),
            col("score"),
        )
        .end()?)
    };
    let surveys = of_event(&s.survey_event)?.select(vec![
        col("profile_id"),
        col("ts"),
        lower(json::pick_text(col("properties"), &s.survey_property)).alias("survey"),
        json::pick_number(col("properties"), std::slice::from_ref(&s.score_property))
            .alias("score"),
    ])?;
    let facts_of_surveys = fact_rows(
        surveys,
        vec![
            ("profile_id", col("profile_id")),
            ("answered_at", col("ts")),
            ("nps", answer(&s.nps_survey, 0.0, 10.0)?),
            ("csat", answer(&s.csat_survey, 1.0, 5.0)?),
        ],
    )?;
    let latest = |answer: &str| -> Result<Expr, QueryError> {
        Ok(last_value_udaf()
            .call(vec![col(answer)])
            .order_by(vec![col("answered_at").sort(true, false)])
            .filter(col(answer).is_not_null())
            .build()?)
    };
    let mut facts = facts_of_profiles
        .union(facts_of_tickets)?
        .union(facts_of_orders)?
        .union(facts_of_surveys)?;
    if !s.refund_event.is_empty() {
        facts = facts.union(facts_of_refunds)?;
    }
    let raw = facts
        .aggregate(
            vec![col("profile_id")],
            vec![
                max(col("last_seen")).alias("last_seen"),
                sum(col("amount")).alias("gross"),
                count(col("order_ts")).alias("order_count"),
                max(col("order_ts")).alias("last_order_at"),
                array_agg(micros("order_ts"))
                    .filter(col("order_ts").is_not_null())
                    .build()?
                    .alias("times"),
                sum(col("refund")).alias("refunded"),
                latest("nps")?.alias("nps"),
                latest("csat")?.alias("csat"),
                median(col("minutes")).alias("response"),
            ],
        )?
        // Events of a profile no longer live (erased) have no profile row.
        .filter(col("last_seen").is_not_null())?;

    let bought = col("order_count").gt(lit(0i64));
    let clv = round(vec![
        greatest(vec![
            col("gross") - coalesce(vec![col("refunded"), lit(0.0)]),
            lit(0.0),
        ]),
        lit(2i64),
    ]);
    let raw = raw.select(vec![
        col("profile_id"),
        when(bought.clone(), clv).end()?.alias("clv"),
        when(bought.clone(), col("order_count"))
            .end()?
            .alias("orders"),
        when(
            bought.clone(),
            round(vec![
                col("gross") / cast(col("order_count"), DataType::Float64),
                lit(2i64),
            ]),
        )
        .end()?
        .alias("avg_order_value"),
        col("last_order_at"),
        days_since("last_order_at", now).alias("order_days"),
        udf::median_gap_days(col("times")).alias("gap_days"),
        cast(round(vec![col("nps")]), DataType::Int64).alias("nps_score"),
        cast(round(vec![col("csat")]), DataType::Int64).alias("csat_score"),
        round(vec![col("response"), lit(2i64)]).alias("first_response_minutes"),
        days_since("last_seen", now).alias("days_since_last_seen"),
    ])?;
    let started = std::time::Instant::now();
    let raw_schema = Arc::new(raw.schema().as_arrow().clone());
    let raw = raw.collect().await?;
    let per_profile_ms = started.elapsed().as_secs_f64() * 1e3;

    // RFM scores rank each buyer against every other: one sort per figure over the figure's
    // column alone (a window function would carry every column through each sort).
    let raw = datafusion::arrow::compute::concat_batches(&raw_schema, &raw).map_err(arrow)?;
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
    let scored = ctx.read_table(table(
        slices(&scored, partitions),
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
    ])?;
    let started = std::time::Instant::now();
    let schema: SchemaRef = Arc::new(done.schema().as_arrow().clone());
    let batches = done.collect().await?;
    tracing::debug!(
        tickets_ms,
        per_profile_ms,
        population_ms = started.elapsed().as_secs_f64() * 1e3,
        "customer-health built-in phases"
    );
    Ok(BuiltIns {
        computed_at: now,
        profiles: table(batches, partitions, schema)?,
        tickets,
    })
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

/// `batch` cut into about `parts` zero-copy slices.
fn slices(batch: &RecordBatch, parts: usize) -> Vec<RecordBatch> {
    let size = batch.num_rows().div_ceil(parts.max(1)).max(1);
    (0..batch.num_rows())
        .step_by(size)
        .map(|start| batch.slice(start, size.min(batch.num_rows() - start)))
        .collect()
}

/// Batches dealt into `partitions` partitions so scans over them run in parallel.
pub(crate) fn table(
    batches: Vec<RecordBatch>,
    partitions: usize,
    schema: SchemaRef,
) -> Result<Arc<MemTable>, QueryError> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or(schema);
    let n = partitions.max(1);
    let mut dealt = vec![Vec::new(); n];
    for (i, batch) in batches.into_iter().enumerate() {
        dealt[i % n].push(batch);
    }
    Ok(Arc::new(MemTable::try_new(schema, dealt)?))
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
