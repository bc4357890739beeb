//! The customer-health report (API.md §6) over everyone or one segment: one DataFusion aggregate
//! over the cached per-profile built-ins (joined with the segment's members, evaluated over the
//! same snapshot view) and one over the answered tickets. Shares are percentages rounded to one
//! decimal; money and minutes to two.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::functions_aggregate::expr_fn::{avg, count, median, sum};
use datafusion::logical_expr::{cast, JoinType};
use datafusion::prelude::{col, lit, DataFrame};
use serde::Serialize;
use uuid::Uuid;

use super::rows_where;
use crate::query::{QueryEngine, QueryError};
use crate::segments::compile::Compiler;
use crate::segments::definition::Condition;
use crate::segments::{self, SegmentError};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    /// Profiles in the population.
    pub profiles: i64,
    pub nps: Nps,
    pub csat: Csat,
    pub clv: Clv,
    pub churn: Churn,
    pub first_response_minutes: FirstResponse,
    /// Customers per loyalty tier (every configured tier, zero included).
    pub loyalty_tiers: BTreeMap<String, i64>,
}

/// Net Promoter Score from each profile's latest NPS answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Nps {
    /// % promoters − % detractors (−100 to 100); null without responses.
    pub score: Option<f64>,
    pub promoters: i64,
    pub passives: i64,
    pub detractors: i64,
    /// Profiles with an NPS answer.
    pub responses: i64,
}

/// CSAT from each profile's latest CSAT answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Csat {
    /// % of responses scoring 4 or 5; null without responses.
    pub score: Option<f64>,
    pub responses: i64,
}

/// Customer lifetime value over the customers (profiles with an order).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Clv {
    pub avg: Option<f64>,
    pub median: Option<f64>,
    pub total: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Churn {
    /// Customers whose churn risk is medium.
    pub at_risk: i64,
    /// Customers whose churn risk is high.
    pub churned: i64,
    /// % of customers churned; null without customers.
    pub rate: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FirstResponse {
    /// Median over the population's answered tickets; null without any.
    pub median: Option<f64>,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| round_to(part as f64 * 100.0 / whole as f64, 1))
}

/// The report over every live profile, or over the members of segment `segment_id`.
pub async fn report(
    engine: &QueryEngine,
    segment_id: Option<Uuid>,
) -> Result<HealthReport, SegmentError> {
    // Look the segment up first: an unknown id is a 404 whatever the snapshot holds.
    let segment = match segment_id {
        Some(id) => {
            let segment = segments::store::get(engine.db(), id)
                .await?
                .ok_or(SegmentError::NotFound(id))?;
            Some(Condition::parse(&segment.definition)?)
        }
        None => None,
    };
    let all = match segment {
        Some(_) => segments::definitions(engine).await?,
        None => segments::Definitions::default(),
    };
    engine.refresh().await?;
    let view = engine.view();
    let built = super::built_ins(engine, &view).await?;
    let mut profiles = built.per_profile(&view.ctx)?;
    let mut tickets = built.tickets(&view.ctx)?;
    if let Some(condition) = &segment {
        let members = Compiler::new(&view, Utc::now(), &all.segments, &all.computed)
            .await?
            .with_built_ins(built.per_profile(&view.ctx)?)
            .members(condition)?
            .select(vec![col("profile_id").alias("member")])
            .map_err(QueryError::from)?;
        // Evaluated once, then joined with both tables.
        let schema = Arc::new(members.schema().as_arrow().clone());
        let batches = members.collect().await.map_err(QueryError::from)?;
        let members = view
            .ctx
            .read_table(crate::query::dealt(batches, 1, schema)?)
            .map_err(QueryError::from)?;
        profiles = only(profiles, members.clone())?;
        tickets = only(tickets, members)?;
    }
    let settings = engine.health_settings();
    let tiers: Vec<&String> = settings.loyalty_tiers.keys().collect();
    let is = |column: &str, value: &str| rows_where(col(column).eq(lit(value)));
    let mut figures = vec![
        count(lit(1)).alias("profiles"),
        is("nps_group", "promoter").alias("promoters"),
        is("nps_group", "passive").alias("passives"),
        is("nps_group", "detractor").alias("detractors"),
        count(col("nps_score")).alias("nps_responses"),
        count(col("csat_score")).alias("csat_responses"),
        rows_where(col("csat_score").gt_eq(lit(4i64))).alias("satisfied"),
        avg(col("clv")).alias("clv_avg"),
        median(col("clv")).alias("clv_median"),
        sum(col("clv")).alias("clv_total"),
        is("churn_risk", "medium").alias("at_risk"),
        is("churn_risk", "high").alias("churned"),
        count(col("churn_risk")).alias("customers"),
    ];
    for (i, tier) in tiers.iter().enumerate() {
        figures.push(is("loyalty_tier", tier).alias(format!("tier_{i}")));
    }
    let row = one_row(
        profiles
            .aggregate(vec![], figures)
            .map_err(QueryError::from)?,
    )
    .await?;
    let response = one_row(
        tickets
            .aggregate(
                vec![],
                vec![median(cast(col("minutes"), DataType::Float64)).alias("median")],
            )
            .map_err(QueryError::from)?,
    )
    .await?;

    let int = |name: &str| int_of(&row, name);
    let (responses, promoters, detractors) =
        (int("nps_responses"), int("promoters"), int("detractors"));
    let csat_responses = int("csat_responses");
    let customers = int("customers");
    Ok(HealthReport {
        profiles: int("profiles"),
        nps: Nps {
            score: percent(promoters - detractors, responses),
            promoters,
            passives: int("passives"),
            detractors,
            responses,
        },
        csat: Csat {
            score: percent(int("satisfied"), csat_responses),
            responses: csat_responses,
        },
        clv: Clv {
            avg: float_of(&row, "clv_avg").map(|x| round_to(x, 2)),
            median: float_of(&row, "clv_median").map(|x| round_to(x, 2)),
            total: round_to(float_of(&row, "clv_total").unwrap_or(0.0), 2),
        },
        churn: Churn {
            at_risk: int("at_risk"),
            churned: int("churned"),
            rate: percent(int("churned"), customers),
        },
        first_response_minutes: FirstResponse {
            median: float_of(&response, "median").map(|x| round_to(x, 2)),
        },
        loyalty_tiers: tiers
            .iter()
            .enumerate()
            .map(|(i, tier)| (tier.to_string(), int(&format!("tier_{i}"))))
            .collect(),
    })
}

/// Rows of `frame` whose `profile_id` is among `members` (column `member`).
fn only(frame: DataFrame, members: DataFrame) -> Result<DataFrame, QueryError> {
    let columns: Vec<_> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| col(f.name()))
        .collect();
    Ok(frame
        .join(
            members,
            JoinType::LeftSemi,
            &["profile_id"],
            &["member"],
            None,
        )?
        .select(columns)?)
}

async fn one_row(frame: DataFrame) -> Result<Option<RecordBatch>, QueryError> {
    Ok(frame
        .collect()
        .await?
        .into_iter()
        .find(|b| b.num_rows() > 0))
}

fn int_of(row: &Option<RecordBatch>, name: &str) -> i64 {
    row.as_ref()
        .and_then(|b| b.column_by_name(name))
        .filter(|c| !c.is_null(0))
        .and_then(|c| c.as_primitive_opt::<Int64Type>().map(|a| a.value(0)))
        .unwrap_or(0)
}

fn float_of(row: &Option<RecordBatch>, name: &str) -> Option<f64> {
    row.as_ref()
        .and_then(|b| b.column_by_name(name))
        .filter(|c| !c.is_null(0))
        .and_then(|c| c.as_primitive_opt::<Float64Type>().map(|a| a.value(0)))
}
