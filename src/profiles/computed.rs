//! Computed traits: per-profile aggregates over events (`count`, `sum` / `avg` / `min` / `max`
//! of a property, `first` / `last` value, `most_frequent`, `unique_list`), each with an optional
//! event name, `where` filter and window. The definition parses once (pure); `aggregate` turns it
//! into a DataFusion plan over the snapshot's `events` yielding `(profile_id, value)`.

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::{
    array_agg, avg, count, first_value, last_value, max, min, sum,
};
use datafusion::logical_expr::{cast, ExprFunctionExt};
use datafusion::prelude::{col, lit, DataFrame};
use serde_json::Value;

use crate::query::QueryError;
use crate::segments::definition::{
    parse_filter_at, parse_window_at, DefinitionError, PropertyFilter, Window,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    MostFrequent,
    UniqueList,
}

impl Kind {
    const ALL: [(&'static str, Kind); 9] = [
        ("count", Kind::Count),
        ("sum", Kind::Sum),
        ("avg", Kind::Avg),
        ("min", Kind::Min),
        ("max", Kind::Max),
        ("first", Kind::First),
        ("last", Kind::Last),
        ("most_frequent", Kind::MostFrequent),
        ("unique_list", Kind::UniqueList),
    ];

    /// What the values are, for type-checking segment conditions.
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Count | Kind::Sum | Kind::Avg | Kind::Min | Kind::Max => DataType::Float64,
            Kind::UniqueList => DataType::List(std::sync::Arc::new(
                datafusion::arrow::datatypes::Field::new("item", DataType::Utf8, true),
            )),
            _ => DataType::Utf8,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComputedTrait {
    pub name: String,
    pub kind: Kind,
    pub event: Option<String>,
    pub property: Option<String>,
    pub filter: Option<PropertyFilter>,
    pub window: Option<Window>,
}

fn err<T>(at: &str, problem: impl Into<String>) -> Result<T, DefinitionError> {
    Err(DefinitionError {
        at: at.to_string(),
        problem: problem.into(),
    })
}

impl ComputedTrait {
    /// `{"name", "kind", "event"?, "property"?, "where"?, "within"?}`
    pub fn parse(value: &Value) -> Result<ComputedTrait, DefinitionError> {
        let map = value
            .as_object()
            .map_or_else(|| err("computed trait", "must be a JSON object"), Ok)?;
        if let Some(extra) = map.keys().find(|k| {
            !["name", "kind", "event", "property", "where", "within"].contains(&k.as_str())
        }) {
            return err("computed trait", format!("unexpected key {extra:?}"));
        }
        let name = match map.get("name").and_then(Value::as_str).map(str::trim) {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 100
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                n.to_string()
            }
            _ => return err("name", "must be 1 to 100 letters, digits or underscores"),
        };
        let kind_name = map.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind = Kind::ALL
            .iter()
            .find(|(n, _)| *n == kind_name)
            .map(|(_, k)| *k)
            .map_or_else(
                || {
                    let names: Vec<&str> = Kind::ALL.iter().map(|(n, _)| *n).collect();
                    err(
                        "kind",
                        format!(
                            "unknown kind {kind_name:?}; expected one of {}",
                            names.join(", ")
                        ),
                    )
                },
                Ok,
            )?;
        let text = |key: &str| -> Result<Option<String>, DefinitionError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                Some(_) => err(key, "must be a non-empty string"),
            }
        };
        let event = text("event")?;
        let property = text("property")?;
        if kind != Kind::Count && property.is_none() {
            return err(
                "property",
                format!("a `{kind_name}` computed trait needs the property it aggregates"),
            );
        }
        let filter = map
            .get("where")
            .map(|w| parse_filter_at(w, "where"))
            .transpose()?;
        let window = map
            .get("within")
            .map(|w| parse_window_at(w, "within"))
            .transpose()?;
        Ok(ComputedTrait {
            name,
            kind,
            event,
            property,
            filter,
            window,
        })
    }

    /// `(profile_id, value)` for every profile with at least one matching event.
    pub fn aggregate(
        &self,
        events: DataFrame,
        now: DateTime<Utc>,
    ) -> Result<DataFrame, QueryError> {
        let mut filter = lit(true);
        if let Some(event) = &self.event {
            filter = filter.and(col("event").eq(lit(event.as_str())));
        }
        filter = crate::segments::compile::window_filter(filter, self.window.as_ref(), now);
        if let Some(f) = &self.filter {
            filter = filter.and(crate::segments::compile::property_filter(f)?);
        }
        let matching = events.filter(filter)?;
        let property = self.property.as_deref().unwrap_or("");
        let number =
            || crate::query::json::json_number().call(vec![col("properties"), lit(property)]);
        let text = || crate::query::json::json_text().call(vec![col("properties"), lit(property)]);
        let by_ts = |asc: bool| vec![col("ts").sort(asc, false)];
        let value = match self.kind {
            Kind::Count => cast(count(lit(1)), DataType::Float64),
            Kind::Sum => sum(number()),
            Kind::Avg => avg(number()),
            Kind::Min => min(number()),
            Kind::Max => max(number()),
            Kind::First => first_value(text(), by_ts(true)),
            Kind::Last => last_value(text(), by_ts(true)),
            Kind::MostFrequent => {
                // Count each value per profile, then keep the most frequent (ties: smallest value).
                let counted = matching
                    .select(vec![col("profile_id"), text().alias("v")])?
                    .filter(col("v").is_not_null())?
                    .aggregate(
                        vec![col("profile_id"), col("v")],
                        vec![count(lit(1)).alias("n")],
                    )?;
                let order = vec![col("n").sort(false, false), col("v").sort(true, false)];
                return Ok(counted.aggregate(
                    vec![col("profile_id")],
                    vec![first_value(col("v"), order).alias("value")],
                )?);
            }
            Kind::UniqueList => {
                let values = matching
                    .select(vec![col("profile_id"), text().alias("v")])?
                    .filter(col("v").is_not_null())?;
                let list = array_agg(col("v"))
                    .distinct()
                    .order_by(vec![col("v").sort(true, false)])
                    .build()?;
                return Ok(values.aggregate(vec![col("profile_id")], vec![list.alias("value")])?);
            }
        };
        Ok(matching.aggregate(vec![col("profile_id")], vec![value.alias("value")])?)
    }
}
