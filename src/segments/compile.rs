//! The segment compiler: a typed `Condition` becomes a DataFusion plan yielding the matching live
//! profile ids (one column, `profile_id`). Conditions combine as set operations over profile ids
//! (all = intersect, any = union, not = all profiles except), so `not` over an event keeps the
//! profiles that never did it. Type mismatches against the snapshot's observed trait types and
//! unplannable SQL are `Plan` errors (a 400); engine failures are not.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::DataType;
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::functions::expr_fn::{coalesce, starts_with, strpos};
use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
use datafusion::functions_nested::expr_fn::array_has;
use datafusion::logical_expr::{Expr, JoinType};
use datafusion::prelude::{col, lit, DataFrame};
use datafusion::scalar::ScalarValue;
use serde_json::Value;
use uuid::Uuid;

use super::definition::{
    Aggregate, Comparison, Condition, EventCondition, Measure, Op, Operand, PropertyFilter, Window,
};
use crate::profiles::computed::ComputedTrait;
use crate::query::{QueryError, View};

/// Compiles conditions against one view of the snapshot.
pub struct Compiler<'a> {
    view: &'a View,
    profiles: DataFrame,
    events: DataFrame,
    identities: DataFrame,
    now: DateTime<Utc>,
    /// Definitions of segments that conditions may reference.
    segments: &'a HashMap<Uuid, Condition>,
    /// Computed traits conditions may use.
    computed: &'a HashMap<String, ComputedTrait>,
    /// The customer-health built-ins of this view (`crate::health`), when conditions use them.
    built_ins: Option<DataFrame>,
}

fn plan(msg: impl Into<String>) -> QueryError {
    QueryError::Plan(msg.into())
}

impl<'a> Compiler<'a> {
    pub async fn new(
        view: &'a View,
        now: DateTime<Utc>,
        segments: &'a HashMap<Uuid, Condition>,
        computed: &'a HashMap<String, ComputedTrait>,
    ) -> Result<Compiler<'a>, QueryError> {
        Ok(Compiler {
            profiles: view.ctx.table("profiles").await?,
            events: view.ctx.table("events").await?,
            identities: view.ctx.table("identities").await?,
            view,
            now,
            segments,
            computed,
            built_ins: None,
        })
    }

    /// Lets conditions use the customer-health built-ins (`per_profile` of this view).
    pub fn with_built_ins(mut self, per_profile: DataFrame) -> Self {
        self.built_ins = Some(per_profile);
        self
    }

    /// `(profile_id, value)` of a built-in for the profiles that have a value.
    fn built_in(&self, name: &str) -> Result<DataFrame, QueryError> {
        let per_profile = self.built_ins.clone().ok_or_else(|| {
            QueryError::Engine(datafusion::error::DataFusionError::Internal(format!(
                "the built-in `{name}` was used without the built-ins"
            )))
        })?;
        Ok(per_profile
            .select(vec![col("profile_id"), col(name).alias("value")])?
            .filter(col("value").is_not_null())?)
    }

    /// Every live profile id.
    fn everyone(&self) -> Result<DataFrame, QueryError> {
        Ok(self
            .profiles
            .clone()
            .select(vec![col("id").alias("profile_id")])?)
    }

    /// The ids of the profiles matching `condition`.
    pub fn members(&self, condition: &Condition) -> Result<DataFrame, QueryError> {
        self.compile(condition, 0)
    }

    fn compile(&self, condition: &Condition, depth: usize) -> Result<DataFrame, QueryError> {
        if depth > 64 {
            return Err(plan("segment references nest too deep (is there a cycle?)"));
        }
        Ok(match condition {
            Condition::All(items) => {
                let mut it = items.iter();
                let first = it.next().ok_or_else(|| plan("`all` is empty"))?;
                let mut df = self.compile(first, depth + 1)?;
                for c in it {
                    df = df.intersect_distinct(self.compile(c, depth + 1)?)?;
                }
                df
            }
            Condition::Any(items) => {
                let mut it = items.iter();
                let first = it.next().ok_or_else(|| plan("`any` is empty"))?;
                let mut df = self.compile(first, depth + 1)?;
                for c in it {
                    df = df.union_distinct(self.compile(c, depth + 1)?)?;
                }
                df
            }
            Condition::Not(inner) => self
                .everyone()?
                .except_distinct(self.compile(inner, depth + 1)?)?,
            Condition::Trait { path, cmp } => {
                let filter = match self.view.trait_types.get(path) {
                    None => lit(matches!(cmp.op, Op::NotExists)),
                    Some(data_type) => {
                        check_type(&format!("trait `{path}`"), data_type, cmp)?;
                        compare(get_field(col("traits"), path.as_str()), cmp, data_type)
                    }
                };
                self.profiles
                    .clone()
                    .filter(filter)?
                    .select(vec![col("id").alias("profile_id")])?
            }
            Condition::Computed { name, cmp } => {
                let (values, data_type) = match crate::health::built_in_type(name) {
                    Some(data_type) => (self.built_in(name)?, data_type),
                    None => {
                        let computed = self
                            .computed
                            .get(name)
                            .ok_or_else(|| plan(format!("unknown computed trait `{name}`")))?;
                        (
                            computed.aggregate(self.events.clone(), self.now)?,
                            computed.kind.data_type(),
                        )
                    }
                };
                let what = format!("computed trait `{name}`");
                match (&data_type, cmp.op) {
                    (_, Op::NotExists) => self
                        .everyone()?
                        .except_distinct(values.select(vec![col("profile_id")])?)?,
                    (_, Op::Exists) => values.select(vec![col("profile_id")])?,
                    (DataType::List(_), Op::Contains) => {
                        let Operand::Scalar(v) = &cmp.operand else {
                            return Err(plan("`contains` needs a value"));
                        };
                        let has = array_has(col("value"), literal(v, &DataType::Utf8));
                        values.filter(has)?.select(vec![col("profile_id")])?
                    }
                    (DataType::List(_), op) => {
                        return Err(plan(format!(
                            "{what} is a list; use contains, exists or not_exists, not `{}`",
                            op.name()
                        )));
                    }
                    _ => {
                        check_type(&what, &data_type, cmp)?;
                        values
                            .filter(compare(col("value"), cmp, &data_type))?
                            .select(vec![col("profile_id")])?
                    }
                }
            }
            Condition::Identity { kind, cmp } => {
                let of_kind = self
                    .identities
                    .clone()
                    .filter(col("kind").eq(lit(kind.as_str())))?;
                match cmp.op {
                    Op::NotExists => self
                        .everyone()?
                        .except_distinct(of_kind.select(vec![col("profile_id")])?.distinct()?)?,
                    _ => {
                        check_type(&format!("identity `{kind}`"), &DataType::Utf8, cmp)?;
                        of_kind
                            .filter(compare(col("value"), cmp, &DataType::Utf8))?
                            .select(vec![col("profile_id")])?
                            .distinct()?
                    }
                }
            }
            Condition::Event(event) => self.event(event)?,
            Condition::Segment(id) => {
                let inner = self
                    .segments
                    .get(id)
                    .ok_or_else(|| plan(format!("no segment with id {id}")))?;
                self.compile(inner, depth + 1)?
            }
            Condition::Sql(sql) => {
                let profiles = self.profile_view()?;
                let expr = self
                    .view
                    .ctx
                    .parse_sql_expr(sql, profiles.schema())
                    .map_err(|e| plan(format!("the SQL condition cannot be planned: {e}")))?;
                let filtered = profiles
                    .filter(expr)
                    .map_err(|e| plan(format!("the SQL condition cannot be planned: {e}")))?;
                filtered.select(vec![col("id").alias("profile_id")])?
            }
        })
    }

    /// The profile view SQL conditions see: `profiles` plus a `computed` struct of every
    /// computed trait.
    fn profile_view(&self) -> Result<DataFrame, QueryError> {
        let mut view = self.profiles.clone();
        if self.computed.is_empty() && self.built_ins.is_none() {
            return Ok(view);
        }
        let mut names: Vec<&String> = self.computed.keys().collect();
        names.sort();
        let mut fields = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let values = self.computed[*name]
                .aggregate(self.events.clone(), self.now)?
                .select(vec![
                    col("profile_id").alias(format!("pid_{i}")),
                    col("value").alias(format!("value_{i}")),
                ])?;
            view = view.join(
                values,
                JoinType::Left,
                &["id"],
                &[&format!("pid_{i}")],
                None,
            )?;
            fields.push(lit(name.as_str()));
            fields.push(col(format!("value_{i}")));
        }
        if let Some(built_ins) = &self.built_ins {
            let mut columns = vec![col("profile_id").alias("pid_built_in")];
            for (name, _) in crate::health::BUILT_INS {
                columns.push(col(name).alias(format!("built_in_{name}")));
                fields.push(lit(name));
                fields.push(col(format!("built_in_{name}")));
            }
            view = view.join(
                built_ins.clone().select(columns)?,
                JoinType::Left,
                &["id"],
                &["pid_built_in"],
                None,
            )?;
        }
        let mut columns: Vec<Expr> = self
            .profiles
            .schema()
            .fields()
            .iter()
            .map(|f| col(f.name()))
            .collect();
        columns.push(named_struct(fields).alias("computed"));
        Ok(view.select(columns)?)
    }

    fn event(&self, e: &EventCondition) -> Result<DataFrame, QueryError> {
        let mut filter = col("event").eq(lit(e.event.as_str()));
        match &e.window {
            None => {}
            Some(Window::Last(duration)) => {
                filter = filter.and(col("ts").gt_eq(timestamp(self.now - *duration)));
            }
            Some(Window::Between(from, to)) => {
                filter = filter
                    .and(col("ts").gt_eq(timestamp(*from)))
                    .and(col("ts").lt(timestamp(*to)));
            }
        }
        if let Some(w) = &e.filter {
            filter = filter.and(property_filter(w)?);
        }
        let matching = self.events.clone().filter(filter)?;
        let (measure, cmp) = match &e.measure {
            Measure::Count(cmp) => (count(lit(1)).alias("m"), cmp),
            Measure::Property {
                aggregate,
                property,
                cmp,
            } => {
                let value = json_number(property);
                let agg = match aggregate {
                    Aggregate::Sum => sum(value),
                    Aggregate::Avg => avg(value),
                    Aggregate::Min => min(value),
                    Aggregate::Max => max(value),
                };
                (agg.alias("m"), cmp)
            }
        };
        let per_profile = matching.aggregate(vec![col("profile_id")], vec![measure])?;
        let counts_zero = matches!(e.measure, Measure::Count(_)) && admits_zero(cmp);
        if counts_zero {
            // "fewer than 3" includes everyone who never did it: join all profiles, missing = 0.
            let counted = per_profile.select(vec![col("profile_id").alias("pid"), col("m")])?;
            let joined =
                self.everyone()?
                    .join(counted, JoinType::Left, &["profile_id"], &["pid"], None)?;
            let m = coalesce(vec![col("m"), lit(0i64)]);
            Ok(joined
                .filter(compare(m, cmp, &DataType::Float64))?
                .select(vec![col("profile_id")])?)
        } else {
            Ok(per_profile
                .filter(compare(col("m"), cmp, &DataType::Float64))?
                .select(vec![col("profile_id")])?)
        }
    }
}

/// `filter` restricted to events inside `window` (the start included, a `to` excluded).
pub fn window_filter(filter: Expr, window: Option<&Window>, now: DateTime<Utc>) -> Expr {
    match window {
        None => filter,
        Some(Window::Last(duration)) => filter.and(col("ts").gt_eq(timestamp(now - *duration))),
        Some(Window::Between(from, to)) => filter
            .and(col("ts").gt_eq(timestamp(*from)))
            .and(col("ts").lt(timestamp(*to))),
    }
}

fn timestamp(t: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(t.timestamp_micros()),
        Some("UTC".into()),
    ))
}

fn json_number(property: &str) -> Expr {
    crate::query::json::json_number().call(vec![col("properties"), lit(property)])
}

fn json_text(property: &str) -> Expr {
    crate::query::json::json_text().call(vec![col("properties"), lit(property)])
}

/// Whether a count of zero satisfies the comparison.
fn admits_zero(cmp: &Comparison) -> bool {
    let zero = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    match (&cmp.op, &cmp.operand) {
        (Op::Eq, Operand::Scalar(v)) => zero(v) == 0.0,
        (Op::Neq, Operand::Scalar(v)) => zero(v) != 0.0,
        (Op::Lt, Operand::Scalar(v)) => 0.0 < zero(v),
        (Op::Lte, Operand::Scalar(v)) => 0.0 <= zero(v),
        (Op::Gt, Operand::Scalar(v)) => 0.0 > zero(v),
        (Op::Gte, Operand::Scalar(v)) => 0.0 >= zero(v),
        (Op::In, Operand::List(vs)) => vs.iter().any(|v| zero(v) == 0.0),
        (Op::NotIn, Operand::List(vs)) => !vs.iter().any(|v| zero(v) == 0.0),
        (Op::Between, Operand::Range(a, b)) => zero(a) <= 0.0 && 0.0 <= zero(b),
        (Op::NotExists, _) => false,
        (Op::Exists, _) => false,
        _ => false,
    }
}

/// The boolean expression of a `where` filter over `properties`.
pub fn property_filter(f: &PropertyFilter) -> Result<Expr, QueryError> {
    Ok(match f {
        PropertyFilter::All(items) => {
            let mut exprs = items
                .iter()
                .map(property_filter)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter();
            let first = exprs.next().ok_or_else(|| plan("`all` is empty"))?;
            exprs.fold(first, Expr::and)
        }
        PropertyFilter::Any(items) => {
            let mut exprs = items
                .iter()
                .map(property_filter)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter();
            let first = exprs.next().ok_or_else(|| plan("`any` is empty"))?;
            exprs.fold(first, Expr::or)
        }
        // A missing property satisfies `not`: compare as false, then negate.
        PropertyFilter::Not(inner) => !coalesce(vec![property_filter(inner)?, lit(false)]),
        PropertyFilter::Compare { property, cmp } => {
            let numeric = match &cmp.operand {
                Operand::Scalar(v) => v.is_number(),
                Operand::List(vs) => vs.iter().all(Value::is_number),
                Operand::Range(_, _) => true,
                Operand::None => false,
            } && !matches!(cmp.op, Op::Contains | Op::StartsWith);
            if numeric {
                compare(json_number(property), cmp, &DataType::Float64)
            } else {
                compare(json_text(property), cmp, &DataType::Utf8)
            }
        }
    })
}

fn kind_of(value: &Value) -> DataType {
    match value {
        Value::Bool(_) => DataType::Boolean,
        Value::Number(_) => DataType::Float64,
        _ => DataType::Utf8,
    }
}

fn describe(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "booleans",
        DataType::Float64 => "numbers",
        _ => "text",
    }
}

/// Refuses comparisons whose value types cannot match what the field holds.
fn check_type(what: &str, field: &DataType, cmp: &Comparison) -> Result<(), QueryError> {
    let values: Vec<&Value> = match &cmp.operand {
        Operand::None => return Ok(()),
        Operand::Scalar(v) => vec![v],
        Operand::List(vs) => vs.iter().collect(),
        Operand::Range(a, b) => vec![a, b],
    };
    for v in values {
        let given = kind_of(v);
        if &given != field {
            return Err(plan(format!(
                "{what} holds {}, but `{}` compares it with {}",
                describe(field),
                cmp.op.name(),
                describe(&given)
            )));
        }
    }
    let ordered = matches!(cmp.op, Op::Gt | Op::Gte | Op::Lt | Op::Lte | Op::Between);
    if ordered && *field == DataType::Boolean {
        return Err(plan(format!(
            "{what} holds booleans; `{}` needs an ordered type",
            cmp.op.name()
        )));
    }
    if matches!(cmp.op, Op::Contains | Op::StartsWith) && *field != DataType::Utf8 {
        return Err(plan(format!(
            "{what} holds {}; `{}` needs text",
            describe(field),
            cmp.op.name()
        )));
    }
    Ok(())
}

fn literal(value: &Value, as_type: &DataType) -> Expr {
    match (value, as_type) {
        (Value::Bool(b), _) => lit(*b),
        (Value::Number(n), DataType::Utf8) => lit(n.to_string()),
        (Value::Number(n), _) => lit(n.as_f64().unwrap_or(f64::NAN)),
        (Value::String(s), _) => lit(s.as_str()),
        (other, _) => lit(other.to_string()),
    }
}

/// `field <op> value`, for a field of type `as_type`.
fn compare(field: Expr, cmp: &Comparison, as_type: &DataType) -> Expr {
    let l = |v: &Value| literal(v, as_type);
    match (&cmp.op, &cmp.operand) {
        (Op::Exists, _) => field.is_not_null(),
        (Op::NotExists, _) => field.is_null(),
        (Op::Eq, Operand::Scalar(v)) => field.eq(l(v)),
        (Op::Neq, Operand::Scalar(v)) => field.not_eq(l(v)),
        (Op::Gt, Operand::Scalar(v)) => field.gt(l(v)),
        (Op::Gte, Operand::Scalar(v)) => field.gt_eq(l(v)),
        (Op::Lt, Operand::Scalar(v)) => field.lt(l(v)),
        (Op::Lte, Operand::Scalar(v)) => field.lt_eq(l(v)),
        (Op::In, Operand::List(vs)) => field.in_list(vs.iter().map(l).collect(), false),
        (Op::NotIn, Operand::List(vs)) => field.in_list(vs.iter().map(l).collect(), true),
        (Op::Between, Operand::Range(a, b)) => field.between(l(a), l(b)),
        (Op::Contains, Operand::Scalar(v)) => strpos(field, l(v)).gt(lit(0i64)),
        (Op::StartsWith, Operand::Scalar(v)) => starts_with(field, l(v)),
        // The parser guarantees operand shapes; anything else matches nothing.
        _ => lit(false),
    }
}
