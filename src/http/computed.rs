//! Computed traits over the API: declare, list, delete, and refresh their values now.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::{json_body, resource, Page};
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::profiles::computed::ComputedTrait;
use crate::profiles::store::{self, StoredComputedTrait};
use crate::segments::{self, SegmentError};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/computed-traits")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(resource("/v1/computed-traits/refresh").route(web::post().to(refresh)))
    .service(resource("/v1/computed-traits/{name}").route(web::delete().to(delete)));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Refreshed {
    /// Profiles with at least one computed value.
    pub profiles: usize,
    pub elapsed_ms: f64,
}

/// Declares (or replaces) a computed trait: `{"name", "kind", "event"?, "property"?, "where"?, "within"?}`.
#[utoipa::path(post, path = "/v1/computed-traits", tag = "computed traits", request_body = Object,
    responses((status = 201, body = StoredComputedTrait), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn create(
    principal: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let body: Value = json_body(payload).await?;
    let computed = ComputedTrait::parse(&body).map_err(SegmentError::from)?;
    if crate::health::is_built_in(&computed.name) {
        return Err(ApiError::Conflict(format!(
            "`{}` is a built-in computed trait; choose another name",
            computed.name
        )));
    }
    if !state
        .db
        .timed(store::put_computed_trait(
            &state.db,
            &computed.name,
            &body,
            "api",
        ))
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "`{}` is declared in the configuration; change it there",
            computed.name
        )));
    }
    let stored = state
        .db
        .timed(store::computed_traits(&state.db))
        .await?
        .into_iter()
        .find(|t| t.name == computed.name);
    let stored = stored.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("computed trait vanished after insert"))
    })?;
    Ok(HttpResponse::Created().json(stored))
}

/// Every computed trait.
#[utoipa::path(get, path = "/v1/computed-traits", tag = "computed traits",
    responses((status = 200, body = Page<StoredComputedTrait>), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn list(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let items = state.db.timed(store::computed_traits(&state.db)).await?;
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: None,
    }))
}

/// Deletes a computed trait declared over the API.
#[utoipa::path(delete, path = "/v1/computed-traits/{name}", tag = "computed traits", params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn delete(
    principal: Principal,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    match state
        .db
        .timed(store::delete_computed_trait(&state.db, &name))
        .await?
        .as_deref()
    {
        None => Err(ApiError::NotFound(format!(
            "no computed trait named {:?}",
            name.as_str()
        ))),
        Some("config") => Err(ApiError::Conflict(format!(
            "`{}` is declared in the configuration; remove it there",
            name.as_str()
        ))),
        Some(_) => Ok(HttpResponse::NoContent().finish()),
    }
}

/// Recomputes every computed trait now (the schedule does this too).
#[utoipa::path(post, path = "/v1/computed-traits/refresh", tag = "computed traits",
    responses((status = 200, body = Refreshed), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn refresh(
    principal: Principal,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let started = std::time::Instant::now();
    let profiles = segments::refresh_computed(&state.query).await?;
    Ok(HttpResponse::Ok().json(Refreshed {
        profiles,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    }))
}
