//! Request-wide limits that are not one stage's business: the time a request may take, and the
//! size of JSON bodies of the admin, profile and segment APIs (the tracking API reads its body
//! itself under Segment's limits).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::web;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::startup::AppState;

/// Largest JSON body the bearer-token APIs accept; segment definitions are the largest.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// How long a request may take, and where to count the ones that take longer.
pub struct Deadline {
    limit: Duration,
    metrics: Arc<Metrics>,
}

/// The configured request time limit (`[server] request_timeout_secs`; 0 = none).
pub fn request_time_limit(req: &ServiceRequest) -> Option<Deadline> {
    let state = req.app_data::<web::Data<AppState>>()?;
    let secs = state.settings.server.request_timeout_secs;
    (secs > 0).then(|| Deadline {
        limit: Duration::from_secs(secs),
        metrics: state.metrics.clone(),
    })
}

/// Runs a request under its time limit. Past it the handler is dropped (its database work is
/// cancelled or finishes on its own; a retried batch is deduplicated by messageId) and the
/// client is told to come back: 503 + Retry-After, as SDKs expect of an overloaded server.
pub async fn within<B>(
    deadline: Option<Deadline>,
    call: impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let call = crate::db::on_request_path(call);
    let Some(Deadline { limit, metrics }) = deadline else {
        return call.await;
    };
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => {
            metrics.requests_timed_out.inc();
            tracing::warn!(limit_secs = limit.as_secs(), "request timed out");
            Err(ApiError::Unavailable {
                detail: format!(
                    "the request took longer than the {} s limit; retry later",
                    limit.as_secs()
                ),
                retry_after_secs: 5,
            }
            .into())
        }
    }
}

/// A JSON body that cannot be read: too large is 413, anything else (syntax, types, nesting
/// deeper than 128, invalid UTF-8) is 400 with serde's description of where.
pub fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::PayloadTooLarge(
            format!("the JSON body is larger than the {limit} bytes this endpoint accepts"),
        ),
        other => ApiError::BadRequest(format!("invalid JSON body: {other}")),
    }
}
