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

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::functions::core::expr_fn::greatest;
use datafusion::functions::expr_fn::{coalesce, concat, lower};
use datafusion::functions::math::expr_fn::{floor, round};
use datafusion::functions_aggregate::expr_fn::{array_agg, count, max, median, min, sum};
use datafusion::functions_aggregate::first_last::last_value_udaf;
use datafusion::functions_window::expr_fn::rank;
use datafusion::logical_expr::{cast, not, when, Expr, ExprFunctionExt, JoinType, SortExpr};
use datafusion::prelude::{col, lit, DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;

use crate::query::{QueryEngine, QueryError, View};
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

    // Orders: gross value, count, last time and the usual interval between them.
    let value = udf::pick_number(col("properties"), &s.order_value_properties);
    let mut orders = events
        .clone()
        .filter(col("event").eq(lit(s.order_event.as_str())))?
        .aggregate(
            vec![col("profile_id")],
            vec![
                sum(value.clone()).alias("gross"),
                count(lit(1)).alias("orders"),
                max(col("ts")).alias("last_order_at"),
                array_agg(micros("ts")).alias("times"),
            ],
        )?
        .select(vec![
            col("profile_id").alias("o_id"),
            coalesce(vec![col("gross"), lit(0.0)]).alias("gross"),
            col("orders"),
            col("last_order_at"),
            udf::median_gap_days(col("times")).alias("gap_days"),
        ])?;
    let refunded = if s.refund_event.is_empty() {
        lit(0.0)
    } else {
        let refunds = events
            .clone()
            .filter(col("event").eq(lit(s.refund_event.as_str())))?
            .aggregate(vec![col("profile_id")], vec![sum(value).alias("refunded")])?
            .select(vec![col("profile_id").alias("r_id"), col("refunded")])?;
        orders = orders.join(refunds, JoinType::Left, &["o_id"], &["r_id"], None)?;
        coalesce(vec![col("refunded"), lit(0.0)])
    };

    // Surveys: each profile's latest valid NPS and CSAT answers.
    let surveys = events
        .clone()
        .filter(col("event").eq(lit(s.survey_event.as_str())))?
        .select(vec![
            col("profile_id"),
            col("ts"),
            lower(udf::pick_text(col("properties"), &s.survey_property)).alias("survey"),
            udf::pick_number(col("properties"), std::slice::from_ref(&s.score_property))
                .alias("score"),
        ])?;
    let latest = |survey: &str, low: f64, high: f64| -> Result<Expr, QueryError> {
        let valid = col("survey")
            .eq(lit(survey.to_lowercase()))
            .and(col("score").between(lit(low), lit(high)));
        Ok(last_value_udaf()
            .call(vec![col("score")])
            .order_by(vec![col("ts").sort(true, false)])
            .filter(valid)
            .build()?)
    };
    let surveys = surveys
        .aggregate(
            vec![col("profile_id")],
            vec![
                latest(&s.nps_survey, 0.0, 10.0)?.alias("nps"),
                latest(&s.csat_survey, 1.0, 5.0)?.alias("csat"),
            ],
        )?
        .select(vec![
            col("profile_id").alias("s_id"),
            cast(round(vec![col("nps")]), DataType::Int64).alias("nps_score"),
            cast(round(vec![col("csat")]), DataType::Int64).alias("csat_score"),
        ])?;

    // Tickets: minutes from opening to the first response, per answered ticket.
    let mut ticket_events = vec![lit(s.ticket_created_event.as_str())];
    ticket_events.extend(s.ticket_response_events.iter().map(|e| lit(e.as_str())));
    let tickets = events
        .filter(col("event").in_list(ticket_events, false))?
        .select(vec![
            col("profile_id"),
            udf::pick_text(col("properties"), &s.ticket_id_property).alias("ticket"),
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
    let ticket_schema = Arc::new(tickets.schema().as_arrow().clone());
    let tickets = table(tickets.collect().await?, partitions, ticket_schema)?;
    let responses = ctx
        .read_table(tickets.clone())?
        .aggregate(
            vec![col("profile_id")],
            vec![median(col("minutes")).alias("response")],
        )?
        .select(vec![col("profile_id").alias("t_id"), col("response")])?;

    // One row per live profile with the raw figures.
    let clv = when(
        col("orders").is_not_null(),
        round(vec![
            greatest(vec![col("gross") - refunded, lit(0.0)]),
            lit(2i64),
        ]),
    )
    .end()?;
    let raw = profiles
        .select(vec![
            col("id").alias("profile_id"),
            days_since("last_seen", now).alias("days_since_last_seen"),
        ])?
        .join(orders, JoinType::Left, &["profile_id"], &["o_id"], None)?
        .join(surveys, JoinType::Left, &["profile_id"], &["s_id"], None)?
        .join(responses, JoinType::Left, &["profile_id"], &["t_id"], None)?
        .select(vec![
            col("profile_id"),
            clv.alias("clv"),
            col("orders"),
            round(vec![
                col("gross") / cast(col("orders"), DataType::Float64),
                lit(2i64),
            ])
            .alias("avg_order_value"),
            col("last_order_at"),
            days_since("last_order_at", now).alias("order_days"),
            col("gap_days"),
            col("nps_score"),
            col("csat_score"),
            round(vec![col("response"), lit(2i64)]).alias("first_response_minutes"),
            col("days_since_last_seen"),
        ])?;
    let raw_schema = Arc::new(raw.schema().as_arrow().clone());
    let raw = raw.collect().await?;

    // Population-relative figures need every buyer at once.
    let buyers: usize = raw
        .iter()
        .map(|b| {
            b.column_by_name("orders")
                .map_or(0, |c| c.len() - c.null_count())
        })
        .sum();
    let raw = ctx.read_table(table(raw, partitions, raw_schema)?)?;
    let is_buyer = col("orders").is_not_null();
    let quintile = |order: SortExpr| -> Result<Expr, QueryError> {
        // Ties share the rank of the first of them, so they land in the same quintile.
        let rank = rank()
            .partition_by(vec![is_buyer.clone()])
            .order_by(vec![order])
            .build()?;
        let share =
            (cast(rank, DataType::Float64) - lit(1.0)) * lit(5.0) / lit(buyers.max(1) as f64);
        Ok(when(
            is_buyer.clone(),
            cast(floor(share), DataType::Int64) + lit(1i64),
        )
        .end()?)
    };
    let scored = raw.select(vec![
        col("profile_id"),
        col("clv"),
        col("orders"),
        col("avg_order_value"),
        col("last_order_at"),
        col("order_days"),
        col("gap_days"),
        col("nps_score"),
        col("csat_score"),
        col("first_response_minutes"),
        col("days_since_last_seen"),
        // Recency: the longest ago ranks first (worst); frequency and monetary: the least.
        quintile(col("order_days").sort(false, true))?.alias("rfm_recency"),
        quintile(col("orders").sort(true, true))?.alias("rfm_frequency"),
        quintile(col("clv").sort(true, true))?.alias("rfm_monetary"),
    ])?;

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
    let schema: SchemaRef = Arc::new(done.schema().as_arrow().clone());
    let batches = done.collect().await?;
    Ok(BuiltIns {
        computed_at: now,
        profiles: table(batches, partitions, schema)?,
        tickets,
    })
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

/// Adds the non-null built-ins of each row of a `per_profile` batch to that profile's JSON
/// object (keyed by profile id), as the profile API shows them: whole numbers as integers,
/// times as RFC 3339 text.
pub fn json_values(
    batch: &RecordBatch,
    into: &mut std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>,
) {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    };
    use serde_json::Value;

    let Some(ids) = batch
        .column_by_name("profile_id")
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return;
    };
    let schema = batch.schema();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if field.name() == "profile_id" {
            continue;
        }
        for row in 0..batch.num_rows() {
            if column.is_null(row) {
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
                    DateTime::<Utc>::from_timestamp_micros(micros).map(|t| {
                        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                    })
                }
                _ => None,
            };
            if let Some(value) = value {
                into.entry(ids.value(row).to_string())
                    .or_default()
                    .insert(field.name().clone(), value);
            }
        }
    }
}
