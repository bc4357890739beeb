//! Per-source rate limiting of the tracking API: one token bucket per source (so per write key),
//! in memory on this instance. A request costs one token; an empty bucket answers `429` with the
//! seconds until a token is back, which is what Segment and RudderStack SDKs wait before retrying.
//!
//! Buckets exist only for sources that authenticated, so their number is bounded by the sources
//! table, not by what strangers send.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// The limit: `per_sec` requests a second sustained, `burst` at once; `per_sec == 0` is off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct SourceRateLimits {
    limit: RateLimit,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

/// A refused request: how long until the source may send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

impl SourceRateLimits {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        SourceRateLimits {
            limit: RateLimit {
                per_sec: per_sec as f64,
                // A burst below one request would refuse everything.
                burst: (burst.max(1)) as f64,
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `source`'s bucket.
    pub fn check(&self, source: Uuid) -> Result<(), Throttled> {
        self.check_at(source, Instant::now())
    }

    fn check_at(&self, source: Uuid, now: Instant) -> Result<(), Throttled> {
        let RateLimit { per_sec, burst } = self.limit;
        if per_sec <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update; the numbers are
        // still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / per_sec;
            Err(Throttled {
                retry_after_secs: (wait.ceil() as u64).max(1),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_allowed_then_the_sustained_rate() {
        let limits = SourceRateLimits::new(2, 3);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.check_at(a, t0), Ok(()));
        }
        assert_eq!(
            limits.check_at(a, t0),
            Err(Throttled {
                retry_after_secs: 1
            })
        );
        assert_eq!(limits.check_at(b, t0), Ok(()), "buckets are per source");
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            limits.check_at(a, later),
            Ok(()),
            "one token back after 1/rate"
        );
        assert!(limits.check_at(a, later).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off_and_slow_rates_ask_for_longer_waits() {
        let off = SourceRateLimits::new(0, 0);
        let source = Uuid::new_v4();
        for _ in 0..10_000 {
            assert!(off.check(source).is_ok());
        }
        let slow = SourceRateLimits::new(1, 1);
        let t0 = Instant::now();
        assert!(slow.check_at(source, t0).is_ok());
        assert_eq!(
            slow.check_at(source, t0 + Duration::from_millis(100)),
            Err(Throttled {
                retry_after_secs: 1
            })
        );
    }
}
