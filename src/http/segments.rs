//! Segments (API.md §4): definitions, preview, evaluation, members and history.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{json_body, page_of, resource, valid_name, Page, PageQuery};
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::profiles::store::{self as profiles, Profile};
use crate::segments::{
    self, store, store::Evaluation, store::Member, store::Segment, SegmentError,
};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/segments")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(resource("/v1/segments/preview").route(web::post().to(preview)))
    .service(
        resource("/v1/segments/{id}")
            .route(web::get().to(get))
            .route(web::put().to(replace))
            .route(web::delete().to(delete)),
    )
    .service(resource("/v1/segments/{id}/evaluate").route(web::post().to(evaluate)))
    .service(resource("/v1/segments/{id}/members").route(web::get().to(members)))
    .service(resource("/v1/segments/{id}/history").route(web::get().to(history)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentBody {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    pub description: Option<String>,
    /// The condition tree, or `{"sql": "<boolean SQL over the profile view>"}`.
    #[schema(value_type = Object)]
    pub definition: Value,
}

impl SegmentBody {
    /// PostgreSQL text and jsonb cannot hold U+0000: refuse it here, naming the field.
    fn check_storable(&self) -> Result<(), ApiError> {
        fn has_nul(value: &Value) -> bool {
            match value {
                Value::String(s) => s.contains('\0'),
                Value::Array(items) => items.iter().any(has_nul),
                Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
                _ => false,
            }
        }
        let nul = |field: &str| {
            ApiError::BadRequest(format!(
                "`{field}` contains a NUL character (\\u0000), which cannot be stored"
            ))
        };
        if self
            .description
            .as_deref()
            .is_some_and(|d| d.contains('\0'))
        {
            return Err(nul("description"));
        }
        if has_nul(&self.definition) {
            return Err(nul("definition"));
        }
        Ok(())
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    #[schema(value_type = Object)]
    pub definition: Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreviewResult {
    pub count: usize,
    pub sample: Vec<Profile>,
    pub elapsed_ms: f64,
}

/// Creates a segment; an invalid definition is a 400 naming the problem.
#[utoipa::path(post, path = "/v1/segments", tag = "segments", request_body = SegmentBody,
    responses((status = 201, body = Segment), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn create(
    principal: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let body: SegmentBody = json_body(payload).await?;
    let name = valid_name(&body.name)?;
    body.check_storable()?;
    segments::validate(&state.query, &body.definition, None).await?;
    let segment = state
        .db
        .timed(store::insert(
            &state.db,
            name,
            body.description.as_deref(),
            &body.definition,
        ))
        .await?;
    Ok(HttpResponse::Created().json(segment))
}

/// Lists segments.
#[utoipa::path(get, path = "/v1/segments", tag = "segments", params(PageQuery),
    responses((status = 200, body = Page<Segment>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn list(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let limit = query.limit()?;
    let items = state
        .db
        .timed(store::list(&state.db, query.uuid_cursor()?, limit + 1))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, |s| s.id.to_string())))
}

async fn found(state: &AppState, id: Uuid) -> Result<Segment, ApiError> {
    state
        .db
        .timed(store::get(&state.db, id))
        .await?
        .ok_or_else(|| SegmentError::NotFound(id).into())
}

/// One segment.
#[utoipa::path(get, path = "/v1/segments/{id}", tag = "segments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Segment), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn get(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    Ok(HttpResponse::Ok().json(found(&state, id.into_inner()).await?))
}

/// Replaces a segment's name, description and definition.
#[utoipa::path(put, path = "/v1/segments/{id}", tag = "segments", params(("id" = Uuid, Path)), request_body = SegmentBody,
    responses((status = 200, body = Segment), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn replace(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let body: SegmentBody = json_body(payload).await?;
    let id = id.into_inner();
    let name = valid_name(&body.name)?;
    body.check_storable()?;
    found(&state, id).await?;
    segments::validate(&state.query, &body.definition, Some(id)).await?;
    let segment = state
        .db
        .timed(store::update(
            &state.db,
            id,
            name,
            body.description.as_deref(),
            &body.definition,
        ))
        .await?
        .ok_or(SegmentError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(segment))
}

/// Deletes a segment and its memberships.
#[utoipa::path(delete, path = "/v1/segments/{id}", tag = "segments", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn delete(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let id = id.into_inner();
    let definitions = state.db.timed(store::definitions(&state.db)).await?;
    for (other, definition) in definitions {
        let refers = segments::definition::Condition::parse(&definition)
            .map(|c| c.references().contains(&id))
            .unwrap_or(false);
        if other != id && refers {
            return Err(ApiError::Conflict(format!(
                "segment {other} refers to this segment; change it first"
            )));
        }
    }
    if !state.db.timed(store::delete(&state.db, id)).await? {
        return Err(SegmentError::NotFound(id).into());
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Evaluates a definition without saving anything.
#[utoipa::path(post, path = "/v1/segments/preview", tag = "segments", request_body = PreviewBody,
    responses((status = 200, body = PreviewResult), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn preview(
    principal: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let body: PreviewBody = json_body(payload).await?;
    let started = std::time::Instant::now();
    let (condition, others) = segments::validate(&state.query, &body.definition, None).await?;
    let ids = segments::matching(&state.query, &condition, &others).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut sample = Vec::new();
    for id in ids.iter().take(10) {
        // The segment was evaluated over resolved profiles; the sample shows them as they are.
        if let Some(profile) = state
            .db
            .timed(profiles::by_id(&state.db, *id, false))
            .await?
            .profile
        {
            sample.push(profile);
        }
    }
    Ok(HttpResponse::Ok().json(PreviewResult {
        count: ids.len(),
        sample,
        elapsed_ms,
    }))
}

/// Evaluates a segment now and saves the membership diff.
#[utoipa::path(post, path = "/v1/segments/{id}/evaluate", tag = "segments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Evaluation), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:write"])))]
pub async fn evaluate(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsWrite)?;
    let started = std::time::Instant::now();
    let evaluation = segments::evaluate(&state.query, id.into_inner()).await?;
    state
        .metrics
        .segment_evaluation
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok().json(evaluation))
}

/// Members with the time they entered, paged by profile id.
#[utoipa::path(get, path = "/v1/segments/{id}/members", tag = "segments", params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = Page<Member>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn members(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let id = id.into_inner();
    found(&state, id).await?;
    let limit = query.limit()?;
    let items = state
        .db
        .timed(store::members(
            &state.db,
            id,
            query.uuid_cursor()?,
            limit + 1,
        ))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, |m| m.profile_id.to_string())))
}

/// Size over time, and entered / exited counts per evaluation, oldest first.
#[utoipa::path(get, path = "/v1/segments/{id}/history", tag = "segments", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<Evaluation>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["segments:read"])))]
pub async fn history(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::SegmentsRead)?;
    let id = id.into_inner();
    found(&state, id).await?;
    let items = state.db.timed(store::history(&state.db, id)).await?;
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: None,
    }))
}
