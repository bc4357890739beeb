//! `json_text(doc, key)` and `json_number(doc, key)`: a top-level value of a JSON object held as
//! text (event properties), as Utf8 or Float64. Strings that hold numbers count as numbers, as
//! Segment sources often send `"revenue": "42.50"`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Builder, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde_json::Value;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonGet {
    name: &'static str,
    numeric: bool,
    signature: Signature,
}

pub fn json_text() -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonGet {
        name: "json_text",
        numeric: false,
        signature: signature(),
    })
}

pub fn json_number() -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonGet {
        name: "json_number",
        numeric: true,
        signature: signature(),
    })
}

fn signature() -> Signature {
    Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable)
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
        let key = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(key))) => key.clone(),
            _ => return exec_err!("{}: the key must be a string literal", self.name),
        };
        let docs = args.args[0].clone().into_array(args.number_rows)?;
        let Some(docs) = docs.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{}: the document must be text", self.name);
        };
        let value_of = |i: usize| -> Option<Value> {
            if docs.is_null(i) {
                return None;
            }
            let mut map: serde_json::Map<String, Value> =
                serde_json::from_str(docs.value(i)).ok()?;
            map.remove(&key)
        };
        let out: ArrayRef = if self.numeric {
            let mut b = Float64Builder::with_capacity(docs.len());
            for i in 0..docs.len() {
                b.append_option(value_of(i).and_then(|v| match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }));
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
