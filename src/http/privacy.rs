//! Privacy (API.md §7): erasing a profile and the suppression list. Scope `privacy:write`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use super::{page_of, resource, Page, PageQuery};
use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Problem};
use crate::privacy::{self, store, store::Suppression};
use crate::startup::AppState;

/// `DELETE /v1/profiles/{id}` shares its resource with `GET` (see `profiles::routes`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/suppressions").route(web::get().to(list_suppressions)))
        .service(resource("/v1/suppressions/{id}").route(web::delete().to(unsuppress)));
}

/// Erases a person: the profile (a merged-away id stands for its survivor) and every profile
/// merged into it, their identities, traits, events, memberships, computed values and merge
/// lineage. Their identifiers go on the suppression list: later messages carrying one are
/// acknowledged but dropped, and counted in `kizuna_events_suppressed_total`.
#[utoipa::path(delete, path = "/v1/profiles/{id}", tag = "privacy", params(("id" = Uuid, Path)),
    responses((status = 204, description = "erased"), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["privacy:write"])))]
pub async fn erase_profile(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::PrivacyWrite)?;
    let id = id.into_inner();
    let erasure = state
        .db
        .timed(async { Ok(privacy::erase(&state.db, &state.rules, id).await) })
        .await??;
    state.suppressions.invalidate();
    // Any finished file export written since the person was first seen may hold them.
    let removed = crate::exports::worker::forget_erased(
        &state.db,
        &state.settings.exports.dir,
        erasure.first_seen,
    )
    .await
    .map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "profile erased, but removing export files that may hold it failed: {e}"
        ))
    })?;
    // No identifier values here: logs must not name the person just forgotten.
    tracing::info!(
        profiles = erasure.profile_ids.len(),
        identifiers = erasure.identifiers.len(),
        events = erasure.deleted.events,
        suppressed = erasure.suppressed,
        export_files_removed = removed,
        "profile erased"
    );
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuppressionParams {
    /// Items a page (1–1000, default 100).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only this identifier kind (user_id, anonymous_id, email, phone or an externalId type).
    pub kind: Option<String>,
    /// With `kind`: only the suppression of this value, normalized as identity resolution
    /// normalizes it (so an operator can find the entry to lift for a given email).
    pub value: Option<String>,
}

/// The suppression list: hashes of erased identifiers, oldest first.
#[utoipa::path(get, path = "/v1/suppressions", tag = "privacy", params(SuppressionParams),
    responses((status = 200, body = Page<Suppression>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["privacy:write"])))]
pub async fn list_suppressions(
    principal: Principal,
    state: web::Data<AppState>,
    params: web::Query<SuppressionParams>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::PrivacyWrite)?;
    let params = params.into_inner();
    let page = PageQuery {
        limit: params.limit,
        cursor: params.cursor,
    };
    let limit = page.limit()?;
    let kind = params.kind.map(|k| k.trim().to_lowercase());
    let hash = match (&kind, &params.value) {
        (_, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "`value` needs `kind`, e.g. ?kind=email&value=ada@example.com".into(),
            ))
        }
        (Some(kind), Some(raw)) => match state.rules.normalize(kind, raw) {
            Some(value) => Some(privacy::identifier_hash(kind, &value).to_vec()),
            // A blocked or unusable value identifies no one, so nothing suppresses it.
            None => {
                return Ok(HttpResponse::Ok().json(Page::<Suppression> {
                    items: Vec::new(),
                    next_cursor: None,
                }))
            }
        },
    };
    let items = state
        .db
        .timed(store::list(
            &state.db,
            page.uuid_cursor()?,
            limit + 1,
            kind.as_deref(),
            hash.as_deref(),
        ))
        .await?;
    Ok(HttpResponse::Ok().json(page_of(items, limit, |s| s.id.to_string())))
}

/// Lifts a suppression: later messages carrying the identifier are stored again.
#[utoipa::path(delete, path = "/v1/suppressions/{id}", tag = "privacy", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["privacy:write"])))]
pub async fn unsuppress(
    principal: Principal,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::PrivacyWrite)?;
    let id = id.into_inner();
    if !state.db.timed(store::delete(&state.db, id)).await? {
        return Err(ApiError::NotFound(format!("no suppression with id {id}")));
    }
    state.suppressions.invalidate();
    tracing::info!(suppression_id = %id, "suppression lifted");
    Ok(HttpResponse::NoContent().finish())
}
