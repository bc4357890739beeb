//! Prometheus metrics: requests and latencies by route, events ingested / deduplicated /
//! rejected, and the counters later stages add to.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub events_ingested: IntCounter,
    pub events_deduplicated: IntCounter,
    pub events_rejected: IntCounter,
    pub profile_merges: IntCounter,
    pub events_resolved: IntCounter,
    pub resolution_lag: Histogram,
    pub segment_evaluation: Histogram,
    pub requests_rate_limited: IntCounter,
    pub events_suppressed: IntCounter,
    pub requests_timed_out: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "kizuna_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "kizuna_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let metrics = Metrics {
            events_ingested: counter("kizuna_events_ingested_total", "Messages stored"),
            events_deduplicated: counter(
                "kizuna_events_deduplicated_total",
                "Messages acknowledged but not stored again (retries)",
            ),
            events_rejected: counter(
                "kizuna_events_rejected_total",
                "Requests refused as invalid",
            ),
            profile_merges: counter(
                "kizuna_profile_merges_total",
                "Profiles merged into another",
            ),
            events_resolved: counter(
                "kizuna_identity_events_resolved_total",
                "Messages the identity resolver has attributed to a profile (or to none, when every identifier was blocked)",
            ),
            resolution_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "kizuna_identity_resolution_lag_seconds",
                    "Freshness: from a message's receipt to the commit that makes its profile reflect it",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
            )
            .expect("valid metric"),
            segment_evaluation: Histogram::with_opts(
                HistogramOpts::new(
                    "kizuna_segment_evaluation_seconds",
                    "Segment evaluation time",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )
            .expect("valid metric"),
            requests_rate_limited: counter(
                "kizuna_requests_rate_limited_total",
                "Tracking requests refused with 429 by a source's rate limit",
            ),
            events_suppressed: counter(
                "kizuna_events_suppressed_total",
                "Messages dropped at ingest because they carry an erased (suppressed) identifier",
            ),
            requests_timed_out: counter(
                "kizuna_requests_timed_out_total",
                "Requests answered 503 for exceeding server.request_timeout_secs",
            ),
            http_requests,
            http_duration,
            registry,
        };
        let r = &metrics.registry;
        for collector in [
            Box::new(metrics.http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.http_duration.clone()),
            Box::new(metrics.events_ingested.clone()),
            Box::new(metrics.events_deduplicated.clone()),
            Box::new(metrics.events_rejected.clone()),
            Box::new(metrics.profile_merges.clone()),
            Box::new(metrics.events_resolved.clone()),
            Box::new(metrics.resolution_lag.clone()),
            Box::new(metrics.segment_evaluation.clone()),
            Box::new(metrics.requests_rate_limited.clone()),
            Box::new(metrics.events_suppressed.clone()),
            Box::new(metrics.requests_timed_out.clone()),
        ] {
            r.register(collector).expect("metric registered once");
        }
        metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
