//! Ingestion: the Segment-compatible tracking API's stage. Takes a request body as bytes (gzip or
//! not, whatever its Content-Type claims), authenticates the source, validates every message and
//! stores the request all-or-nothing, acknowledging only after commit.

pub mod message;
pub mod rate_limit;
pub mod store;

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::startup::AppState;
pub use message::{IngestError, Limits, MessageType};

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::TooLarge(detail) => ApiError::PayloadTooLarge(detail),
            IngestError::Malformed(detail) | IngestError::Invalid(detail) => {
                ApiError::BadRequest(detail)
            }
        }
    }
}

/// The outcome of an accepted request.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub stored: u64,
    pub duplicates: u64,
}

/// Undoes `Content-Encoding` (gzip or none) and enforces the request size limit on the
/// decompressed bytes, without ever inflating more than the limit.
pub fn decode_body(
    raw: &[u8],
    content_encoding: Option<&str>,
    max_bytes: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |size: String| {
        ApiError::PayloadTooLarge(format!(
            "the request body is {size} bytes; the limit is {max_bytes} bytes (500 KiB) a request"
        ))
    };
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    let body = match encoding.as_deref() {
        None | Some("") | Some("identity") => raw.to_vec(),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::MultiGzDecoder::new(raw)
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::BadRequest(format!("the gzip body cannot be decompressed: {e}"))
                })?;
            if out.len() > max_bytes {
                return Err(too_large(format!("more than {max_bytes}")));
            }
            out
        }
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {other:?} is not supported; send gzip or an uncompressed body"
            )))
        }
    };
    if body.len() > max_bytes {
        return Err(too_large(body.len().to_string()));
    }
    Ok(body)
}

/// Authenticates, validates and stores one request. `kind` is the single-call path's type;
/// `None` means a batch.
pub async fn ingest(
    state: &AppState,
    basic_write_key: Option<String>,
    body: &[u8],
    kind: Option<MessageType>,
    received_at: DateTime<Utc>,
) -> Result<Accepted, ApiError> {
    let limits = Limits::from_settings(&state.settings.ingest);
    // A key in the Authorization header is checked before the body is even parsed.
    let mut source = None;
    if let Some(key) = &basic_write_key {
        let auth = state.write_keys.authenticate(&state.db, key).await?;
        // Throttled before parsing: a flooding client costs us as little as possible.
        admit(state, auth.id)?;
        source = Some(auth);
    }
    let parsed = match kind {
        Some(kind) => message::parse_single(body, kind, received_at, &limits),
        None => message::parse_batch(body, received_at, &limits),
    };
    let request = match parsed {
        Ok(request) => request,
        Err(err) => {
            if source.is_none() {
                // We cannot tell who sent it; say so rather than leak validation rules.
                return Err(ApiError::Unauthorized(
                    "missing write key: send it as the HTTP Basic username or as `writeKey` in the body".into(),
                ));
            }
            state.metrics.events_rejected.inc();
            return Err(err.into());
        }
    };
    let source = match source {
        Some(source) => source,
        None => {
            let key = request.write_key.as_deref().ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing write key: send it as the HTTP Basic username or as `writeKey` in the body".into(),
                )
            })?;
            let auth = state.write_keys.authenticate(&state.db, key).await?;
            admit(state, auth.id)?;
            auth
        }
    };
    let mut request = request;
    let suppressions = state
        .db
        .timed(state.suppressions.current(&state.db))
        .await?;
    if !suppressions.is_empty() {
        let before = request.messages.len();
        request
            .messages
            .retain(|m| !crate::privacy::is_suppressed(m, &state.rules, &suppressions));
        let dropped = (before - request.messages.len()) as u64;
        if dropped > 0 {
            // Acknowledged like any other message: SDKs would only retry a refusal.
            state.metrics.events_suppressed.inc_by(dropped);
            tracing::debug!(dropped, "messages with suppressed identifiers dropped");
        }
    }
    if request.messages.is_empty() {
        return Ok(Accepted {
            stored: 0,
            duplicates: 0,
        });
    }
    let stored = state
        .db
        .timed(store::insert_messages(
            &state.db,
            source.id,
            received_at,
            &request.messages,
            &state.rules,
        ))
        .await?;
    if stored > 0 {
        // Committed: from here on this instance's reads look for pending messages.
        state.backlog.stored();
        state.resolver_wake.notify_one();
    }
    let duplicates = request.messages.len() as u64 - stored;
    state.metrics.events_ingested.inc_by(stored);
    state.metrics.events_deduplicated.inc_by(duplicates);
    Ok(Accepted { stored, duplicates })
}

/// Takes a request from the source's rate-limit bucket, or answers `429` + `Retry-After`.
fn admit(state: &AppState, source: uuid::Uuid) -> Result<(), ApiError> {
    state.rate_limits.check(source).map_err(|throttled| {
        state.metrics.requests_rate_limited.inc();
        ApiError::TooManyRequests {
            detail: format!(
                "this source sends more than {} requests a second (burst {}); retry after {} s",
                state.settings.ingest.rate_limit_per_sec,
                state.settings.ingest.rate_limit_burst,
                throttled.retry_after_secs
            ),
            retry_after_secs: throttled.retry_after_secs,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bodies_are_inflated_and_bombs_stop_at_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&vec![b' '; 10_000]).unwrap();
        let small = gz.finish().unwrap();
        assert_eq!(
            decode_body(&small, Some("gzip"), 20_000).unwrap().len(),
            10_000
        );
        let err = decode_body(&small, Some("gzip"), 5_000).unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(_)));
        assert!(matches!(
            decode_body(b"x", Some("br"), 10),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode_body(b"not gzip", Some("gzip"), 100),
            Err(ApiError::BadRequest(_))
        ));
    }
}
