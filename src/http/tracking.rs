//! The Segment-compatible tracking API (API.md §1).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures::StreamExt;
use serde::Serialize;

use super::resource;
use crate::error::{ApiError, Problem};
use crate::ingest::{self, MessageType};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/batch").route(web::post().to(batch)))
        .service(resource("/v1/import").route(web::post().to(batch)))
        .service(resource("/v1/b").route(web::post().to(batch)))
        .service(resource("/v1/identify").route(web::post().to(identify)))
        .service(resource("/v1/track").route(web::post().to(track)))
        .service(resource("/v1/page").route(web::post().to(page)))
        .service(resource("/v1/screen").route(web::post().to(screen)))
        .service(resource("/v1/group").route(web::post().to(group)))
        .service(resource("/v1/alias").route(web::post().to(alias)));
}

/// What SDKs wait for: exactly `200 {"success": true}`, sent only after commit.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Success {
    pub success: bool,
}

/// A Segment-spec message (documentation only; the server reads the body whatever its
/// Content-Type and accepts any further fields).
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct TrackingMessage {
    /// identify, track, page, screen, group or alias (required in a batch).
    #[schema(rename = "type")]
    kind: Option<String>,
    #[schema(max_length = 100)]
    message_id: Option<String>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    previous_id: Option<String>,
    group_id: Option<String>,
    event: Option<String>,
    name: Option<String>,
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    #[schema(format = DateTime)]
    original_timestamp: Option<String>,
    #[schema(format = DateTime)]
    sent_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    properties: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    traits: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    context: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    integrations: Option<serde_json::Value>,
    write_key: Option<String>,
}

/// The body of `/v1/batch`.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct BatchBody {
    #[schema(max_items = 2500)]
    batch: Vec<TrackingMessage>,
    #[schema(value_type = Option<Object>)]
    context: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    integrations: Option<serde_json::Value>,
    write_key: Option<String>,
    #[schema(format = DateTime)]
    sent_at: Option<String>,
}

/// The write key from `Authorization: Basic base64(key:)`.
fn basic_write_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::Unauthorized("the Authorization header is not `Basic base64(writeKey:)`".into())
    };
    let value = value.to_str().map_err(|_| invalid())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(invalid());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let user = decoded.split_once(':').map(|(u, _)| u).unwrap_or(&decoded);
    Ok((!user.is_empty()).then(|| user.to_string()))
}

/// Reads the raw body up to a bound, so an oversized request is refused without buffering it.
async fn read_body(mut payload: web::Payload, max_bytes: usize) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        if body.len() + chunk.len() > max_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "the request body is more than {max_bytes} bytes; the limit is 500 KiB a request"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn accept(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    kind: Option<MessageType>,
) -> Result<HttpResponse, ApiError> {
    let received_at = chrono::Utc::now();
    let write_key = basic_write_key(&req)?;
    let max = state.settings.ingest.max_request_bytes;
    // Compressed bodies are usually smaller; the slack covers incompressible ones.
    let raw = read_body(payload, max + max / 8).await?;
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let body = ingest::decode_body(&raw, encoding, max)?;
    ingest::ingest(&state, write_key, &body, kind, received_at).await?;
    Ok(HttpResponse::Ok().json(Success { success: true }))
}

macro_rules! single_call {
    ($fn:ident, $path:literal, $kind:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "tracking",
            request_body(content = TrackingMessage, content_type = "application/json"),
            responses(
                (status = 200, body = Success, description = "stored (or a retry of a stored message)"),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 401, body = Problem, content_type = "application/problem+json"),
                (status = 413, body = Problem, content_type = "application/problem+json"),
                (status = 429, body = Problem, content_type = "application/problem+json", description = "over the source's rate limit; retry after `Retry-After` seconds"),
                (status = 503, body = Problem, content_type = "application/problem+json"),
            ),
            security(("write_key" = [])))]
        pub async fn $fn(
            req: HttpRequest,
            payload: web::Payload,
            state: web::Data<AppState>,
        ) -> Result<HttpResponse, ApiError> {
            accept(req, payload, state, Some($kind)).await
        }
    };
}

single_call!(
    identify,
    "/v1/identify",
    MessageType::Identify,
    "Records who a user is and their traits."
);
single_call!(
    track,
    "/v1/track",
    MessageType::Track,
    "Records an action a user performed."
);
single_call!(
    page,
    "/v1/page",
    MessageType::Page,
    "Records a web page view."
);
single_call!(
    screen,
    "/v1/screen",
    MessageType::Screen,
    "Records a mobile screen view."
);
single_call!(
    group,
    "/v1/group",
    MessageType::Group,
    "Associates a user with a group (account)."
);
single_call!(
    alias,
    "/v1/alias",
    MessageType::Alias,
    "Links a previous id to a user id."
);

/// A batch of messages, stored all-or-nothing (aliases: `/v1/import`, `/v1/b`).
#[utoipa::path(post, path = "/v1/batch", tag = "tracking",
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 200, body = Success, description = "every message stored (retried ones once)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "over the source's rate limit; retry after `Retry-After` seconds"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("write_key" = [])))]
pub async fn batch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    accept(req, payload, state, None).await
}
