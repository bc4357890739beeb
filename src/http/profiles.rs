//! Profiles (API.md §3): the unified profile by id or by any identifier, its timeline and its
//! merge lineage. Scope `profiles:read`.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::{page_of, resource, Page};
use crate::auth::{Principal, Scope};
use crate::db::DbError;
use crate::error::{ApiError, Problem};
use crate::identity::{on_read, ANONYMOUS_ID, EMAIL, PHONE, USER_ID};
use crate::profiles::store::{self, Merge, Profile, TimelineEvent, TimelineQuery};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/profiles/lookup").route(web::get().to(lookup)))
        .service(
            resource("/v1/profiles/{id}")
                .route(web::get().to(get_profile))
                .route(web::delete().to(super::privacy::erase_profile)),
        )
        .service(resource("/v1/profiles/{id}/events").route(web::get().to(timeline)))
        .service(resource("/v1/profiles/{id}/merges").route(web::get().to(merges)));
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no profile with id {id}"))
}

/// The live profile `id` stands for (itself or its survivor), or 404.
async fn live_profile(state: &AppState, id: Uuid) -> Result<Uuid, ApiError> {
    state
        .db
        .timed(store::live_id(&state.db, id))
        .await?
        .ok_or_else(|| not_found(id))
}

/// The unified profile; a merged-away id answers with the surviving profile.
#[utoipa::path(get, path = "/v1/profiles/{id}", tag = "profiles", params(("id" = Uuid, Path)),
    responses((status = 200, body = Profile), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["profiles:read"])))]
pub async fn get_profile(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ProfilesRead)?;
    let id = id.into_inner();
    let pending = state.backlog.may_exist();
    let profile = fresh(&state, || store::by_id(&state.db, id, pending))
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(HttpResponse::Ok().json(profile))
}

/// A profile read that shows every message acknowledged before it: when `read` finds pending
/// events the profile does not show yet, the resolver is asked to take them next, and the read
/// runs again once they are resolved (identity/on_read.rs). Should the resolver not get to them
/// within `identity.read_wait_ms`, the second read shows what is resolved by then.
async fn fresh<F, R>(state: &AppState, read: F) -> Result<Option<Profile>, ApiError>
where
    F: Fn() -> R,
    R: std::future::Future<Output = Result<store::Read, DbError>>,
{
    let first = state.db.timed(read()).await?;
    if first.pending.is_empty() {
        return Ok(first.profile);
    }
    state
        .db
        .timed(on_read::settle(state, &first.pending))
        .await?;
    Ok(state.db.timed(read()).await?.profile)
}

/// Looks a profile up by one identifier: `?email=…`, `?user_id=…`, `?anonymous_id=…`,
/// `?phone=…` or `?<externalId type>=…`. Values are normalized as resolution normalizes them.
#[utoipa::path(get, path = "/v1/profiles/lookup", tag = "profiles",
    params(
        ("user_id" = Option<String>, Query), ("anonymous_id" = Option<String>, Query),
        ("email" = Option<String>, Query), ("phone" = Option<String>, Query),
    ),
    responses((status = 200, body = Profile), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["profiles:read"])))]
pub async fn lookup(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ProfilesRead)?;
    let mut pairs = query.iter();
    let (Some((kind, raw)), None) = (pairs.next(), pairs.next()) else {
        return Err(ApiError::BadRequest(format!(
            "give exactly one identifier, e.g. ?email=ada@example.com (kinds: {USER_ID}, {ANONYMOUS_ID}, {EMAIL}, {PHONE} or an externalId type)"
        )));
    };
    let kind = kind.trim().to_lowercase();
    let missing = || ApiError::NotFound(format!("no profile has the {kind} {raw:?}"));
    let value = state.rules.normalize(&kind, raw).ok_or_else(missing)?;
    let profile = fresh(&state, || {
        state.lookups.get(&state.db, kind.clone(), value.clone())
    })
    .await?
    .ok_or_else(missing)?;
    Ok(HttpResponse::Ok().json(profile))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineParams {
    /// Events a page (1–1000, default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub before: Option<String>,
    /// Same as `before`.
    pub cursor: Option<String>,
    /// A source id, or a source kind (web, mobile, support, email, pos, …).
    pub source: Option<String>,
    /// identify, track, page, screen, group or alias.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
}

fn encode_cursor(event: &TimelineEvent) -> String {
    format!("{}_{}", event.ts.timestamp_micros(), event.seq)
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, i64), ApiError> {
    let invalid = || {
        ApiError::BadRequest(format!(
            "`before` {cursor:?} is not a cursor this API issued"
        ))
    };
    let (micros, seq) = cursor.split_once('_').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let seq: i64 = seq.parse().map_err(|_| invalid())?;
    Ok((
        DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
        seq,
    ))
}

/// The cross-channel timeline: every event of the profile with its source, newest first.
#[utoipa::path(get, path = "/v1/profiles/{id}/events", tag = "profiles", params(("id" = Uuid, Path), TimelineParams),
    responses((status = 200, body = Page<TimelineEvent>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["profiles:read"])))]
pub async fn timeline(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    params: web::Query<TimelineParams>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ProfilesRead)?;
    let limit = match params.limit {
        None => 50,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "`limit` must be between 1 and 1000; got {n}"
            )))
        }
    };
    let before = params
        .before
        .as_deref()
        .or(params.cursor.as_deref())
        .map(decode_cursor)
        .transpose()?;
    let (source_id, source_kind) = match params.source.as_deref() {
        None => (None, None),
        Some(s) => match Uuid::parse_str(s) {
            Ok(id) => (Some(id), None),
            Err(_) => (
                None,
                Some(crate::sources::SourceKind::parse(s)?.as_str().to_string()),
            ),
        },
    };
    if let Some(kind) = params.kind.as_deref() {
        if crate::ingest::MessageType::parse(kind).is_none() {
            return Err(ApiError::BadRequest(format!(
                "`type` must be identify, track, page, screen, group or alias; got {kind:?}"
            )));
        }
    }
    let id = id.into_inner();
    let live = live_profile(&state, id).await?;
    let query = TimelineQuery {
        before,
        source_id,
        source_kind,
        kind: params.kind.clone(),
        limit: limit + 1,
    };
    let items = state
        .db
        .timed(store::timeline(&state.db, live, &query))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, encode_cursor)))
}

/// Merge lineage: which profiles were merged into this one, when, by which identifier, from
/// which message.
#[utoipa::path(get, path = "/v1/profiles/{id}/merges", tag = "profiles", params(("id" = Uuid, Path)),
    responses((status = 200, body = Page<Merge>), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["profiles:read"])))]
pub async fn merges(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::ProfilesRead)?;
    let id = id.into_inner();
    let live = live_profile(&state, id).await?;
    let items = state.db.timed(store::lineage(&state.db, live)).await?;
    Ok(HttpResponse::Ok().json(Page {
        items,
        next_cursor: None,
    }))
}
