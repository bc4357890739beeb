//! HTTP wiring only: routes to stage functions, extractor error handling, the request
//! middleware (metrics, panics → 500 problem) and shared response shapes.

pub mod admin;
pub mod computed;
pub mod exports;
pub mod health;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod privacy;
pub mod profiles;
pub mod segments;
pub mod tracking;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{problem_response, ApiError};
use crate::startup::AppState;

/// A page of a list: `{"items": [...], "next_cursor": "..." | null}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `limit` and `cursor` of list endpoints.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items a page (1–1000, default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::BadRequest(format!(
                "`limit` must be between 1 and 1000; got {n}"
            ))),
        }
    }

    /// A cursor over ids in creation order (ids are UUIDv7).
    pub fn uuid_cursor(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                Uuid::parse_str(c).map_err(|_| {
                    ApiError::BadRequest(format!("`cursor` {c:?} is not a cursor this API issued"))
                })
            })
            .transpose()
    }
}

/// A display name as the admin and segment APIs accept it: trimmed, 1 to 200 characters.
pub fn valid_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.contains('\0') {
        return Err(ApiError::BadRequest(
            "`name` must be 1 to 200 characters, without NUL".into(),
        ));
    }
    Ok(name)
}

/// Builds a page from one more row than asked for: the extra row only says there is a next
/// page, whose cursor `cursor` makes from the last row kept.
pub fn page_of<T>(mut items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next_cursor }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .content_type_required(false)
            .limit(limits::MAX_JSON_BODY_BYTES)
            .error_handler(|err, _| limits::json_error(err).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|err, _| ApiError::BadRequest(format!("invalid path: {err}")).into()),
    )
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::BadRequest(format!("invalid query string: {err}")).into()
    }))
    .service(
        web::scope("")
            .wrap_fn(|req, srv| {
                let limit = limits::request_time_limit(&req);
                limits::within(limit, srv.call(req))
            })
            .wrap_fn(|req, srv| {
                // No clone of the request may live while the router runs (it needs it unique).
                let started = Instant::now();
                let method = req.method().clone();
                let path = req.path().to_string();
                let call = srv.call(req);
                async move {
                    match AssertUnwindSafe(call).catch_unwind().await {
                        Ok(Ok(response)) => {
                            record(response.request(), response.status(), started);
                            Ok(response)
                        }
                        Ok(Err(err)) => Err(err),
                        Err(_) => {
                            tracing::error!(%method, %path, "a request handler panicked");
                            // actix renders an error returned here through ResponseError.
                            Err(ApiError::Internal(anyhow::anyhow!(
                                "handler panicked on {method} {path}"
                            ))
                            .into())
                        }
                    }
                }
            })
            .configure(tracking::routes)
            .configure(admin::routes)
            .configure(profiles::routes)
            .configure(segments::routes)
            .configure(computed::routes)
            .configure(health::routes)
            .configure(ops::routes)
            .configure(privacy::routes)
            .configure(exports::routes)
            .default_service(web::to(not_found)),
    );
}

fn record(req: &HttpRequest, status: StatusCode, started: Instant) {
    let elapsed = started.elapsed();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        let method = req.method().as_str();
        state
            .metrics
            .http_requests
            .with_label_values(&[method, &route, status.as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[method, &route])
            .observe(elapsed.as_secs_f64());
    }
    tracing::debug!(method = %req.method(), %route, status = status.as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1e3, "request");
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    problem_response(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
}

/// A resource that answers unknown methods with a 405 problem.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Reads and parses a JSON body. Handlers call it only after `caller.require(…)`, so a caller
/// without the scope gets 403 whatever it sent, and a malformed body is 400 only for one with it
/// (an extractor would parse the body before the handler could check the scope).
pub async fn json_body<T: serde::de::DeserializeOwned>(
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    use futures::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        if body.len() + chunk.len() > limits::MAX_JSON_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "the JSON body is larger than the {} bytes this endpoint accepts",
                limits::MAX_JSON_BODY_BYTES
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
