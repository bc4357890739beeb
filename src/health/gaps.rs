//! `median_gap`: a customer's usual interval between orders, the median of the gaps between
//! consecutive order times.

const MICROS_PER_DAY: f64 = 86_400_000_000.0;

pub(super) fn median_gap(times: &mut [i64], gaps: &mut Vec<i64>) -> Option<f64> {
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
