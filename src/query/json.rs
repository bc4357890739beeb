//! Reading event properties (a JSON object held as text) in DataFusion plans, for segments,
//! computed traits and the health built-ins alike. `json_text(doc, key)` and
//! `json_number(doc, key)` are registered for SQL; `pick_text` / `pick_number` build the same
//! function over several keys in order of preference. Strings that hold numbers count as
//! numbers, as Segment sources often send `"revenue": "42.50"`. The wanted value is read
//! without building the rest of the document: these run over millions of events.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::lit;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonGet {
    name: &'static str,
    numeric: bool,
    signature: Signature,
}

pub fn json_text() -> ScalarUDF {
    json_get("json_text", false, one_key())
}

pub fn json_number() -> ScalarUDF {
    json_get("json_number", true, one_key())
}

fn one_key() -> Signature {
    Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable)
}

fn json_get(name: &'static str, numeric: bool, signature: Signature) -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonGet {
        name,
        numeric,
        signature,
    })
}

/// The first of `keys` (in order of preference) that `properties` holds as a number (or a
/// string holding one), as Float64.
pub fn pick_number(properties: Expr, keys: &[String]) -> Expr {
    call("pick_number", true, properties, keys)
}

/// `key` of `properties` as text (numbers and booleans in their JSON spelling).
pub fn pick_text(properties: Expr, key: &str) -> Expr {
    call("pick_text", false, properties, &[key.to_string()])
}

fn call(name: &'static str, numeric: bool, properties: Expr, keys: &[String]) -> Expr {
    let mut args = vec![properties];
    args.extend(keys.iter().map(|k| lit(k.as_str())));
    let variadic = Signature::variadic(vec![DataType::Utf8], Volatility::Immutable);
    json_get(name, numeric, variadic).call(args)
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(if self.numeric {
            DataType::Float64
        } else {
            DataType::Utf8
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut keys = Vec::with_capacity(args.args.len().saturating_sub(1));
        for arg in &args.args[1..] {
            match arg {
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(key))) => keys.push(key.clone()),
                _ => return exec_err!("{}: keys must be string literals", self.name),
            }
        }
        let docs = args.args[0].clone().into_array(args.number_rows)?;
        let Some(docs) = docs.as_string_opt::<i32>() else {
            return exec_err!("{}: the document must be text", self.name);
        };
        let value_of = |i: usize| -> Option<Value> {
            if docs.is_null(i) {
                return None;
            }
            pick(docs.value(i), &keys, self.numeric)
        };
        let out: ArrayRef = if self.numeric {
            let mut b = Float64Builder::with_capacity(docs.len());
            for i in 0..docs.len() {
                b.append_option(value_of(i).and_then(|v| v.as_f64()));
            }
            Arc::new(b.finish())
        } else {
            let mut b = StringBuilder::with_capacity(docs.len(), docs.len() * 8);
            for i in 0..docs.len() {
                match value_of(i) {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            Arc::new(b.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The value of the most preferred key of `keys` present in the JSON object `doc` (for
/// `numeric`, only values that are numbers or strings holding numbers count), as a number or
/// as the value itself.
pub fn pick(doc: &str, keys: &[String], numeric: bool) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_str(doc);
    de.deserialize_map(ObjectVisitor { keys, numeric }).ok()?
}

struct ObjectVisitor<'k> {
    keys: &'k [String],
    numeric: bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut best: Option<(usize, Value)> = None;
        while let Some(found) = map.next_key_seed(KeyIndex(self.keys))? {
            match found {
                Some(rank) if best.as_ref().is_none_or(|(b, _)| rank < *b) => {
                    let value: Value = map.next_value()?;
                    let value = if self.numeric {
                        match value {
                            Value::Number(n) => n.as_f64().map(Value::from),
                            Value::String(s) => s.trim().parse::<f64>().ok().map(Value::from),
                            _ => None,
                        }
                    } else {
                        Some(value).filter(|v| !v.is_null())
                    };
                    if let Some(value) = value {
                        best = Some((rank, value));
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(best.map(|(_, v)| v))
    }
}

/// Reads an object key and answers its position in the wanted keys, without allocating it.
struct KeyIndex<'k>(&'k [String]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| k == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_preferred_key_wins_wherever_it_stands() {
        let doc = r#"{"total": 50, "nested": {"revenue": 1}, "revenue": "42.5"}"#;
        assert_eq!(
            pick(doc, &keys(&["revenue", "total"]), true),
            Some(json!(42.5))
        );
        assert_eq!(
            pick(r#"{"total": 50}"#, &keys(&["revenue", "total"]), true),
            Some(json!(50.0))
        );
        assert_eq!(
            pick(
                r#"{"revenue": "n/a", "total": 7}"#,
                &keys(&["revenue", "total"]),
                true
            ),
            Some(json!(7.0))
        );
        assert_eq!(pick(r#"{"a\"b": 1}"#, &keys(&["revenue"]), true), None);
        assert_eq!(pick("not json", &keys(&["revenue"]), true), None);
        assert_eq!(
            pick(
                r#"{"survey": "NPS", "score": 9}"#,
                &keys(&["survey"]),
                false
            ),
            Some(json!("NPS"))
        );
    }
}
