//! Medians: `median_gap`, a customer's usual interval between orders (the median of the gaps
//! between consecutive order times), and `median` of any sorted values.

pub(super) const MICROS_PER_DAY: f64 = 86_400_000_000.0;

/// The median of `n` sorted values, value `i` being `at(i)`; `None` for none.
pub(super) fn median(n: usize, at: impl Fn(usize) -> f64) -> Option<f64> {
    match n {
        0 => None,
        n if n % 2 == 1 => Some(at(n / 2)),
        n => Some((at(n / 2 - 1) + at(n / 2)) / 2.0),
    }
}

pub(super) fn median_gap(times: &mut [i64], gaps: &mut Vec<i64>) -> Option<f64> {
    if times.len() < 2 {
        return None;
    }
    times.sort_unstable();
    gaps.clear();
    gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    gaps.sort_unstable();
    median(gaps.len(), |i| gaps[i] as f64).map(|m| m / MICROS_PER_DAY)
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
