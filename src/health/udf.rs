//! `median_gap_days`: a profile's order times (a list) as its usual interval between orders,
//! a scalar function DataFusion does not have. Event properties are read with
//! `query::json::pick_number` / `pick_text`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Builder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The median interval between consecutive order times (a list of microsecond timestamps), in
/// days; null with fewer than two orders.
pub fn median_gap_days(times: Expr) -> Expr {
    ScalarUDF::new_from_impl(MedianGap {
        signature: Signature::any(1, Volatility::Immutable),
    })
    .call(vec![times])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MedianGap {
    signature: Signature,
}

impl ScalarUDFImpl for MedianGap {
    fn name(&self) -> &str {
        "median_gap_days"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let lists = args.args[0].clone().into_array(args.number_rows)?;
        let Some(lists) = lists.as_list_opt::<i32>() else {
            return exec_err!("median_gap_days: expected a list of times");
        };
        let mut out = Float64Builder::with_capacity(lists.len());
        let mut times: Vec<i64> = Vec::new();
        let mut gaps: Vec<i64> = Vec::new();
        for i in 0..lists.len() {
            if lists.is_null(i) {
                out.append_null();
                continue;
            }
            let items = lists.value(i);
            let Some(items) = items.as_primitive_opt::<Int64Type>() else {
                return exec_err!("median_gap_days: expected microsecond times");
            };
            times.clear();
            times.extend(items.iter().flatten());
            out.append_option(median_gap(&mut times, &mut gaps));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

const MICROS_PER_DAY: f64 = 86_400_000_000.0;

fn median_gap(times: &mut [i64], gaps: &mut Vec<i64>) -> Option<f64> {
    if times.len() < 2 {
        return None;
    }
    times.sort_unstable();
    gaps.clear();
    gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    gaps.sort_unstable();
    let n = gaps.len();
    let median = if n % 2 == 1 {
        gaps[n / 2] as f64
    } else {
        (gaps[n / 2 - 1] as f64 + gaps[n / 2] as f64) / 2.0
    };
    Some(median / MICROS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_interval_is_the_median_gap_between_orders() {
        let day = MICROS_PER_DAY as i64;
        let mut gaps = Vec::new();
        assert_eq!(median_gap(&mut [5 * day], &mut gaps), None);
        assert_eq!(
            median_gap(&mut [40 * day, 0, 10 * day], &mut gaps),
            Some(20.0)
        );
        assert_eq!(
            median_gap(&mut [0, 10 * day, 20 * day, 50 * day], &mut gaps),
            Some(10.0)
        );
    }
}
