//! The admin API (API.md §2): sources with write keys, and API keys with scopes.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{json_body, page_of, resource, valid_name, Page, PageQuery};
use crate::auth::{self, store as keys, Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::sources::{store as sources, SourceKind};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/v1/sources")
            .route(web::post().to(create_source))
            .route(web::get().to(list_sources)),
    )
    .service(
        resource("/v1/sources/{id}")
            .route(web::get().to(get_source))
            .route(web::patch().to(update_source))
            .route(web::delete().to(delete_source)),
    )
    .service(
        resource("/v1/api-keys")
            .route(web::post().to(create_api_key))
            .route(web::get().to(list_api_keys)),
    )
    .service(resource("/v1/api-keys/{id}").route(web::delete().to(delete_api_key)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSource {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// web, mobile, server, support, email, pos, social, crm or other.
    pub kind: String,
}

/// A new source, with its write key (shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedSource {
    #[serde(flatten)]
    pub source: sources::Source,
    pub write_key: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSource {
    pub name: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// admin, profiles:read, segments:read, segments:write, exports:read, privacy:write.
    pub scopes: Vec<String>,
}

/// A new API key, with its token (shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: keys::ApiKey,
    pub token: String,
}

fn source_not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no source with id {id}"))
}

/// Creates a source and its write key.
#[utoipa::path(post, path = "/v1/sources", tag = "admin", request_body = CreateSource,
    responses((status = 201, body = CreatedSource), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn create_source(
    principal: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let body: CreateSource = json_body(payload).await?;
    let name = valid_name(&body.name)?;
    let kind = SourceKind::parse(&body.kind)?;
    let write_key = auth::new_secret("wk_");
    let source = state
        .db
        .timed(sources::insert(
            &state.db,
            name,
            kind,
            &auth::hash_secret(&write_key),
            &auth::hint(&write_key),
        ))
        .await?;
    tracing::info!(source_id = %source.id, kind = kind.as_str(), "source created");
    Ok(HttpResponse::Created().json(CreatedSource { source, write_key }))
}

/// Lists sources, oldest first.
#[utoipa::path(get, path = "/v1/sources", tag = "admin", params(PageQuery),
    responses((status = 200, body = Page<sources::Source>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn list_sources(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let limit = query.limit()?;
    let items = state
        .db
        .timed(sources::list(&state.db, query.uuid_cursor()?, limit + 1))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, |s| s.id.to_string())))
}

/// One source.
#[utoipa::path(get, path = "/v1/sources/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 200, body = sources::Source), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn get_source(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let id = id.into_inner();
    let source = state
        .db
        .timed(sources::get(&state.db, id))
        .await?
        .ok_or_else(|| source_not_found(id))?;
    Ok(HttpResponse::Ok().json(source))
}

/// Renames, disables or re-enables a source.
#[utoipa::path(patch, path = "/v1/sources/{id}", tag = "admin", params(("id" = Uuid, Path)), request_body = UpdateSource,
    responses((status = 200, body = sources::Source), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn update_source(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let body: UpdateSource = json_body(payload).await?;
    let id = id.into_inner();
    let name = body.name.as_deref().map(valid_name).transpose()?;
    let source = state
        .db
        .timed(sources::update(&state.db, id, name, body.enabled))
        .await?
        .ok_or_else(|| source_not_found(id))?;
    state.write_keys.invalidate();
    tracing::info!(source_id = %id, enabled = source.enabled, "source updated");
    Ok(HttpResponse::Ok().json(source))
}

/// Deletes a source: its write key stops working; its events stay.
#[utoipa::path(delete, path = "/v1/sources/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn delete_source(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let id = id.into_inner();
    if !state.db.timed(sources::delete(&state.db, id)).await? {
        return Err(source_not_found(id));
    }
    state.write_keys.invalidate();
    tracing::info!(source_id = %id, "source deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Creates an API key with scopes.
#[utoipa::path(post, path = "/v1/api-keys", tag = "admin", request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn create_api_key(
    principal: Principal,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let body: CreateApiKey = json_body(payload).await?;
    let name = valid_name(&body.name)?;
    if body.scopes.is_empty() {
        return Err(ApiError::BadRequest(
            "`scopes` must name at least one scope".into(),
        ));
    }
    let mut scopes = Vec::with_capacity(body.scopes.len());
    for s in &body.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown scope {s:?}; known scopes: {}",
                known.join(", ")
            ))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let token = auth::new_secret("kz_");
    let key = state
        .db
        .timed(keys::insert(
            &state.db,
            name,
            &scopes,
            &auth::hash_secret(&token),
            &auth::hint(&token),
        ))
        .await?;
    tracing::info!(key_id = %key.id, scopes = ?key.scopes, "API key created");
    Ok(HttpResponse::Created().json(CreatedApiKey { key, token }))
}

/// Lists API keys (never their tokens).
#[utoipa::path(get, path = "/v1/api-keys", tag = "admin", params(PageQuery),
    responses((status = 200, body = Page<keys::ApiKey>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn list_api_keys(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let limit = query.limit()?;
    let items = state
        .db
        .timed(keys::list(&state.db, query.uuid_cursor()?, limit + 1))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, |k| k.id.to_string())))
}

/// Revokes an API key at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "admin", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["admin"])))]
pub async fn delete_api_key(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let id = id.into_inner();
    if !state.db.timed(keys::delete(&state.db, id)).await? {
        return Err(ApiError::NotFound(format!("no API key with id {id}")));
    }
    state.auth.invalidate();
    Ok(HttpResponse::NoContent().finish())
}
