//! Exports (API.md §5): streamed CSV / Parquet / NDJSON of profiles, events and segment members,
//! and file exports written by the worker. All need `exports:read`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::resource;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::exports::{self, store, store::FileExport, ExportError, Format, What};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/segments/{id}/export").route(web::get().to(segment_export)))
        .service(resource("/v1/exports/profiles").route(web::get().to(profiles_export)))
        .service(resource("/v1/exports/events").route(web::get().to(events_export)))
        .service(resource("/v1/exports").route(web::post().to(create)))
        .service(resource("/v1/exports/{id}").route(web::get().to(get)));
}

/// `format` and `fields` of a streamed export (`since` for events).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (the default), `parquet` or `ndjson`.
    pub format: Option<String>,
    /// Comma-separated column names to keep, in this order (default: all).
    pub fields: Option<String>,
    /// Events only: RFC 3339 time; only events at or after it.
    pub since: Option<String>,
}

impl ExportQuery {
    fn format(&self) -> Result<Format, ApiError> {
        Format::parse(self.format.as_deref().unwrap_or("csv")).map_err(ApiError::BadRequest)
    }

    fn fields(&self) -> Result<Option<Vec<String>>, ApiError> {
        Ok(exports::parse_fields(self.fields.as_deref())?)
    }
}

/// Starts the export and answers with its bytes as they are encoded.
async fn stream(
    state: &AppState,
    what: What,
    query: &ExportQuery,
) -> Result<HttpResponse, ApiError> {
    let format = query.format()?;
    let fields = query.fields()?;
    let batches = exports::open(&state.query, &what, fields.as_deref()).await?;
    let chunks = exports::Chunks::new(batches, format)?;
    let name = exports::file_name(&what, format, Utc::now());
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .streaming(exports::encoded(chunks)))
}

/// Streams the members of a segment (as of its last evaluation) with their profile columns and
/// `entered_at`. A segment never evaluated is a 409: evaluate it first.
#[utoipa::path(get, path = "/v1/segments/{id}/export", tag = "exports",
    params(("id" = Uuid, Path), ExportQuery),
    responses((status = 200, description = "the members, in the format asked for", content((String = "text/csv"), (String = "application/vnd.apache.parquet"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["exports:read"])))]
pub async fn segment_export(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ExportsRead)?;
    stream(&state, What::Segment(id.into_inner()), &query).await
}

/// Streams every live profile.
#[utoipa::path(get, path = "/v1/exports/profiles", tag = "exports", params(ExportQuery),
    responses((status = 200, description = "the profiles, in the format asked for", content((String = "text/csv"), (String = "application/vnd.apache.parquet"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["exports:read"])))]
pub async fn profiles_export(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ExportsRead)?;
    stream(&state, What::Profiles, &query).await
}

/// Streams every resolved event (from `since` on, when given).
#[utoipa::path(get, path = "/v1/exports/events", tag = "exports", params(ExportQuery),
    responses((status = 200, description = "the events, in the format asked for", content((String = "text/csv"), (String = "application/vnd.apache.parquet"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["exports:read"])))]
pub async fn events_export(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ExportsRead)?;
    let since = query
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::BadRequest(format!("`since` {s:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()?;
    stream(&state, What::Events { since }, &query).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExport {
    /// `profiles`, `events` or `segment`.
    pub what: String,
    /// `csv`, `parquet` or `ndjson`.
    pub format: String,
    /// The segment, when `what` is `segment`.
    pub segment_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: Uuid,
}

/// Queues a file export; the worker writes it under the export directory as `<id>/<file>` with
/// a `manifest.json`. Follow it with `GET /v1/exports/{id}`.
#[utoipa::path(post, path = "/v1/exports", tag = "exports", request_body = CreateExport,
    responses((status = 202, body = Accepted), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["exports:read"])))]
pub async fn create(
    principal: Principal,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ExportsRead)?;
    let body: CreateExport = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let format = Format::parse(&body.format).map_err(ApiError::BadRequest)?;
    let segment_id = body
        .segment_id
        .as_deref()
        .map(|s| {
            Uuid::parse_str(s)
                .map_err(|_| ApiError::BadRequest(format!("`segment_id` {s:?} is not a UUID")))
        })
        .transpose()?;
    let what = What::parse(&body.what, segment_id)?;
    if let What::Segment(id) = what {
        let segment = state
            .db
            .timed(crate::segments::store::get(&state.db, id))
            .await?
            .ok_or(ExportError::SegmentNotFound(id))?;
        if segment.last_evaluated_at.is_none() {
            return Err(ExportError::NotEvaluated(id).into());
        }
    }
    let export = state
        .db
        .timed(store::insert(
            &state.db,
            what.name(),
            format.name(),
            segment_id,
        ))
        .await?;
    Ok(HttpResponse::Accepted().json(Accepted { id: export.id }))
}

/// A file export's status: `pending`, `running`, `done` (with file, rows, bytes, sha256) or
/// `failed` (with the reason).
#[utoipa::path(get, path = "/v1/exports/{id}", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 200, body = FileExport), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["exports:read"])))]
pub async fn get(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ExportsRead)?;
    let id = id.into_inner();
    let export = state
        .db
        .timed(store::get(&state.db, id))
        .await?
        .ok_or(ExportError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(export))
}
