//! The segment definition language: the JSON condition tree of DESIGN.md §Segments, parsed once
//! into typed `Condition`s. Everything a user can get wrong in its shape is a `DefinitionError`
//! naming the place (`definition.all[1].count.op`) and the problem. Pure: no I/O.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Contains,
    StartsWith,
    Exists,
    NotExists,
    Between,
}

impl Op {
    pub const ALL: [(&'static str, Op); 13] = [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("in", Op::In),
        ("not_in", Op::NotIn),
        ("contains", Op::Contains),
        ("starts_with", Op::StartsWith),
        ("exists", Op::Exists),
        ("not_exists", Op::NotExists),
        ("between", Op::Between),
    ];

    pub fn name(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// The right-hand side of a comparison, checked against its operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `exists` / `not_exists`
    None,
    Scalar(Value),
    List(Vec<Value>),
    Range(Value, Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub op: Op,
    pub operand: Operand,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Window {
    /// The last `duration` before evaluation.
    Last(Duration),
    Between(DateTime<Utc>, DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    Sum,
    Avg,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// How many matching events (default: at least one).
    Count(Comparison),
    /// An aggregate of a numeric property of the matching events.
    Property {
        aggregate: Aggregate,
        property: String,
        cmp: Comparison,
    },
}

/// A condition on an event's properties (`where`).
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyFilter {
    All(Vec<PropertyFilter>),
    Any(Vec<PropertyFilter>),
    Not(Box<PropertyFilter>),
    Compare { property: String, cmp: Comparison },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    pub event: String,
    pub window: Option<Window>,
    pub filter: Option<PropertyFilter>,
    pub measure: Measure,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// A dotted path into the profile's traits.
    Trait {
        path: String,
        cmp: Comparison,
    },
    Computed {
        name: String,
        cmp: Comparison,
    },
    Identity {
        kind: String,
        cmp: Comparison,
    },
    Event(EventCondition),
    Segment(Uuid),
    /// A boolean SQL expression over the profile view.
    Sql(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct DefinitionError {
    pub at: String,
    pub problem: String,
}

fn err<T>(at: &str, problem: impl Into<String>) -> Result<T, DefinitionError> {
    Err(DefinitionError {
        at: at.to_string(),
        problem: problem.into(),
    })
}

const MAX_DEPTH: usize = 32;

impl Condition {
    /// Parses a definition; `{"sql": "…"}` at the top is a SQL condition like any other.
    pub fn parse(value: &Value) -> Result<Condition, DefinitionError> {
        parse_condition(value, "definition", 0)
    }

    /// Segments this condition refers to.
    pub fn references(&self) -> Vec<Uuid> {
        let mut out = Vec::new();
        self.visit(&mut |c| {
            if let Condition::Segment(id) = c {
                out.push(*id);
            }
        });
        out
    }

    pub fn visit(&self, f: &mut impl FnMut(&Condition)) {
        f(self);
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().for_each(|c| c.visit(f)),
            Condition::Not(c) => c.visit(f),
            _ => {}
        }
    }
}

fn object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>, DefinitionError> {
    value
        .as_object()
        .map_or_else(|| err(at, "must be a JSON object (a condition)"), Ok)
}

fn parse_condition(value: &Value, at: &str, depth: usize) -> Result<Condition, DefinitionError> {
    if depth > MAX_DEPTH {
        return err(
            at,
            format!("conditions nest deeper than {MAX_DEPTH} levels"),
        );
    }
    let map = object(value, at)?;
    let kinds = [
        "all", "any", "not", "trait", "computed", "identity", "event", "segment", "sql",
    ];
    let present: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    let kind = match present.as_slice() {
        [one] => *one,
        [] => {
            return err(
                at,
                format!(
                    "unknown condition: expected one of the keys {} (got {})",
                    kinds.join(", "),
                    map.keys()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        }
        many => {
            return err(
                at,
                format!(
                    "a condition has exactly one kind; got {}",
                    many.join(" and ")
                ),
            )
        }
    };
    let allowed: &[&str] = match kind {
        "all" | "any" | "not" | "segment" | "sql" => &[],
        "trait" | "computed" | "identity" => &["op", "value"],
        _ => &["within", "where", "count", "sum", "avg", "min", "max"],
    };
    if let Some(extra) = map
        .keys()
        .find(|k| k.as_str() != kind && !allowed.contains(&k.as_str()))
    {
        return err(
            at,
            format!("unexpected key {extra:?} in a {kind} condition"),
        );
    }
    let inner = &map[kind];
    let here = format!("{at}.{kind}");
    match kind {
        "all" | "any" => {
            let items = inner
                .as_array()
                .map_or_else(|| err(&here, "must be an array of conditions"), Ok)?;
            if items.is_empty() {
                return err(&here, "must hold at least one condition");
            }
            let parsed = items
                .iter()
                .enumerate()
                .map(|(i, c)| parse_condition(c, &format!("{here}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if kind == "all" {
                Condition::All(parsed)
            } else {
                Condition::Any(parsed)
            })
        }
        "not" => Ok(Condition::Not(Box::new(parse_condition(
            inner,
            &here,
            depth + 1,
        )?))),
        "trait" | "computed" | "identity" => {
            let name = non_empty_string(inner, &here)?;
            let cmp = parse_comparison(map, at)?;
            Ok(match kind {
                "trait" => Condition::Trait { path: name, cmp },
                "computed" => Condition::Computed { name, cmp },
                _ => Condition::Identity {
                    kind: name.to_lowercase(),
                    cmp,
                },
            })
        }
        "segment" => {
            let id = inner.as_str().and_then(|s| Uuid::parse_str(s).ok());
            id.map(Condition::Segment)
                .map_or_else(|| err(&here, "must be a segment id"), Ok)
        }
        "sql" => {
            let sql = non_empty_string(inner, &here)?;
            if sql.len() > 10_000 {
                return err(&here, "is longer than 10,000 characters");
            }
            Ok(Condition::Sql(sql))
        }
        _ => parse_event(map, at).map(Condition::Event),
    }
}

fn non_empty_string(value: &Value, at: &str) -> Result<String, DefinitionError> {
    match value.as_str().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => err(at, "must be a non-empty string"),
    }
}

fn parse_comparison(map: &Map<String, Value>, at: &str) -> Result<Comparison, DefinitionError> {
    let op_at = format!("{at}.op");
    let name = map
        .get("op")
        .and_then(Value::as_str)
        .map_or_else(|| err(&op_at, "is missing"), Ok)?;
    let op = Op::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, op)| *op)
        .map_or_else(
            || {
                let names: Vec<&str> = Op::ALL.iter().map(|(n, _)| *n).collect();
                err(
                    &op_at,
                    format!("unknown op {name:?}; expected one of {}", names.join(", ")),
                )
            },
            Ok,
        )?;
    let value_at = format!("{at}.value");
    let value = map.get("value");
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let operand = match op {
        Op::Exists | Op::NotExists => match value {
            None | Some(Value::Null) => Operand::None,
            Some(_) => return err(&value_at, format!("`{name}` takes no value")),
        },
        Op::In | Op::NotIn => match value {
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(scalar) => {
                Operand::List(items.clone())
            }
            _ => {
                return err(
                    &value_at,
                    format!("`{name}` needs a non-empty array of strings, numbers or booleans"),
                )
            }
        },
        Op::Between => match value {
            Some(Value::Array(items)) if items.len() == 2 && items.iter().all(scalar) => {
                Operand::Range(items[0].clone(), items[1].clone())
            }
            _ => return err(&value_at, "`between` needs [low, high]"),
        },
        Op::Contains | Op::StartsWith => match value {
            Some(Value::String(s)) => Operand::Scalar(Value::String(s.clone())),
            _ => return err(&value_at, format!("`{name}` needs a string")),
        },
        _ => match value {
            Some(v) if scalar(v) => Operand::Scalar(v.clone()),
            _ => {
                return err(
                    &value_at,
                    format!("`{name}` needs a string, number or boolean"),
                )
            }
        },
    };
    Ok(Comparison { op, operand })
}

fn parse_event(map: &Map<String, Value>, at: &str) -> Result<EventCondition, DefinitionError> {
    let event = non_empty_string(&map["event"], &format!("{at}.event"))?;
    let window = map
        .get("within")
        .map(|w| parse_window(w, &format!("{at}.within")))
        .transpose()?;
    let filter = map
        .get("where")
        .map(|w| parse_filter(w, &format!("{at}.where"), 0))
        .transpose()?;
    let measures: Vec<&str> = ["count", "sum", "avg", "min", "max"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    let measure = match measures.as_slice() {
        [] => Measure::Count(Comparison {
            op: Op::Gte,
            operand: Operand::Scalar(Value::from(1)),
        }),
        ["count"] => {
            let here = format!("{at}.count");
            let cmp = parse_comparison(object(&map["count"], &here)?, &here)?;
            check_numeric(&cmp, &here)?;
            Measure::Count(cmp)
        }
        [one] => {
            let here = format!("{at}.{one}");
            let inner = object(&map[*one], &here)?;
            let property = inner.get("property").map_or_else(
                || err(&format!("{here}.property"), "is missing"),
                |p| non_empty_string(p, &format!("{here}.property")),
            )?;
            let cmp = parse_comparison(inner, &here)?;
            check_numeric(&cmp, &here)?;
            let aggregate = match *one {
                "sum" => Aggregate::Sum,
                "avg" => Aggregate::Avg,
                "min" => Aggregate::Min,
                _ => Aggregate::Max,
            };
            Measure::Property {
                aggregate,
                property,
                cmp,
            }
        }
        many => {
            return err(
                at,
                format!(
                    "an event condition takes one measure; got {}",
                    many.join(" and ")
                ),
            )
        }
    };
    Ok(EventCondition {
        event,
        window,
        filter,
        measure,
    })
}

/// Counts and aggregates compare with numbers.
fn check_numeric(cmp: &Comparison, at: &str) -> Result<(), DefinitionError> {
    let numeric = |v: &Value| v.is_number();
    let ok = match (&cmp.op, &cmp.operand) {
        (Op::Contains | Op::StartsWith, _) => false,
        (_, Operand::None) => true,
        (_, Operand::Scalar(v)) => numeric(v),
        (_, Operand::List(vs)) => vs.iter().all(numeric),
        (_, Operand::Range(a, b)) => numeric(a) && numeric(b),
    };
    if ok {
        Ok(())
    } else {
        err(
            at,
            format!(
                "`{}` here compares a number; give a numeric value",
                cmp.op.name()
            ),
        )
    }
}

/// Parses a `where` filter found at `at` (also used by computed traits).
pub fn parse_filter_at(value: &Value, at: &str) -> Result<PropertyFilter, DefinitionError> {
    parse_filter(value, at, 0)
}

/// Parses a `within` window found at `at`.
pub fn parse_window_at(value: &Value, at: &str) -> Result<Window, DefinitionError> {
    parse_window(value, at)
}

fn parse_filter(value: &Value, at: &str, depth: usize) -> Result<PropertyFilter, DefinitionError> {
    if depth > MAX_DEPTH {
        return err(
            at,
            format!("conditions nest deeper than {MAX_DEPTH} levels"),
        );
    }
    let map = object(value, at)?;
    for kind in ["all", "any"] {
        if let Some(inner) = map.get(kind) {
            let here = format!("{at}.{kind}");
            let items = inner
                .as_array()
                .filter(|a| !a.is_empty())
                .map_or_else(|| err(&here, "must be a non-empty array"), Ok)?;
            let parsed = items
                .iter()
                .enumerate()
                .map(|(i, f)| parse_filter(f, &format!("{here}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if kind == "all" {
                PropertyFilter::All(parsed)
            } else {
                PropertyFilter::Any(parsed)
            });
        }
    }
    if let Some(inner) = map.get("not") {
        return Ok(PropertyFilter::Not(Box::new(parse_filter(
            inner,
            &format!("{at}.not"),
            depth + 1,
        )?)));
    }
    let property = map.get("property").map_or_else(
        || {
            err(
                at,
                "a `where` condition needs `property`, or all / any / not",
            )
        },
        |p| non_empty_string(p, &format!("{at}.property")),
    )?;
    if let Some(extra) = map
        .keys()
        .find(|k| !["property", "op", "value"].contains(&k.as_str()))
    {
        return err(
            at,
            format!("unexpected key {extra:?} in a property condition"),
        );
    }
    Ok(PropertyFilter::Compare {
        property,
        cmp: parse_comparison(map, at)?,
    })
}

fn parse_window(value: &Value, at: &str) -> Result<Window, DefinitionError> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            let (digits, unit) =
                s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: i64 = digits.parse().map_or_else(
                |_| err(at, format!("{s:?} is not a window like \"30d\" or \"12h\"")),
                Ok,
            )?;
            let duration = match unit {
                "d" => Duration::try_days(n),
                "h" => Duration::try_hours(n),
                "m" => Duration::try_minutes(n),
                "w" => Duration::try_weeks(n),
                _ => None,
            };
            match duration {
                Some(d) if n > 0 && n <= 100_000 => Ok(Window::Last(d)),
                _ => err(
                    at,
                    format!("{s:?} is not a window like \"30d\", \"12h\", \"15m\" or \"2w\""),
                ),
            }
        }
        Value::Object(map) => {
            let time = |key: &str| -> Result<DateTime<Utc>, DefinitionError> {
                let here = format!("{at}.{key}");
                let s = map
                    .get(key)
                    .and_then(Value::as_str)
                    .map_or_else(|| err(&here, "is missing"), Ok)?;
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_or_else(
                        |_| err(&here, format!("{s:?} is not an RFC 3339 date-time")),
                        Ok,
                    )
            };
            let (from, to) = (time("from")?, time("to")?);
            if from >= to {
                return err(at, "`from` must be before `to`");
            }
            Ok(Window::Between(from, to))
        }
        _ => err(
            at,
            "must be like \"30d\" or {\"from\": RFC 3339, \"to\": RFC 3339}",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_design_example_parses() {
        let c = Condition::parse(&json!({"all": [
            {"trait": "plan", "op": "eq", "value": "pro"},
            {"computed": "clv", "op": "gte", "value": 500},
            {"identity": "email", "op": "exists"},
            {"event": "Order Completed", "within": "90d", "where": {"property": "currency", "op": "eq", "value": "EUR"},
             "count": {"op": "gte", "value": 3}},
            {"not": {"event": "Ticket Created", "within": {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}}},
            {"event": "Order Completed", "sum": {"property": "revenue", "op": "between", "value": [10, 100]}},
            {"segment": "01a20337-533c-770a-bee1-ea2a3248359d"},
            {"sql": "traits.plan = 'pro' AND computed.clv > 100"},
        ]}))
        .unwrap();
        let Condition::All(items) = c else { panic!() };
        assert_eq!(items.len(), 8);
        assert!(
            matches!(&items[3], Condition::Event(e) if e.window == Some(Window::Last(Duration::days(90))))
        );
    }

    #[test]
    fn mistakes_are_named_where_they_are() {
        let cases = [
            (
                json!({"trait": "plan", "op": "like", "value": "x"}),
                "definition.op: unknown op \"like\"",
            ),
            (json!({"audience": 1}), "definition: unknown condition"),
            (
                json!({"all": [{"trait": "a", "op": "eq", "value": 1}, {"event": "E", "within": "90x"}]}),
                "definition.all[1].within",
            ),
            (
                json!({"event": "E", "count": {"op": "gte", "value": "three"}}),
                "definition.count: `gte` here compares a number",
            ),
            (
                json!({"trait": "plan", "op": "in", "value": "pro"}),
                "definition.value: `in` needs",
            ),
            (
                json!({"segment": "nope"}),
                "definition.segment: must be a segment id",
            ),
            (
                json!({"event": "E", "within": {"from": "2024-02-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"}}),
                "`from` must be before `to`",
            ),
        ];
        for (definition, expected) in cases {
            let e = Condition::parse(&definition).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected:?} in {e:?}");
        }
    }
}
