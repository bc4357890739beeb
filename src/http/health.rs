//! Customer health (API.md §6): the report over everyone or one segment.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use super::resource;
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::health::report::{self, HealthReport};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/metrics/health").route(web::get().to(health)));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// Report over this segment's members instead of every profile.
    #[param(value_type = Option<Uuid>)]
    pub segment_id: Option<String>,
}

/// NPS, CSAT, CLV, churn, first response time and loyalty tiers over everyone or one segment.
#[utoipa::path(get, path = "/v1/metrics/health", tag = "customer health", params(HealthQuery),
    responses((status = 200, body = HealthReport), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn health(
    principal: Principal,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let query = web::Query::<HealthQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
    let segment_id = query
        .segment_id
        .as_deref()
        .map(|id| {
            Uuid::parse_str(id).map_err(|_| {
                ApiError::BadRequest(format!("`segment_id` {id:?} is not a segment id (a UUID)"))
            })
        })
        .transpose()?;
    let report = report::report(&state.query, segment_id).await?;
    Ok(HttpResponse::Ok().json(report))
}
