//! Privacy (API.md §7): erasing a profile and the suppression list. Scope `privacy:write`.

use actix_web::{web, HttpResponse};
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

/// The suppression list: hashes of erased identifiers, oldest first.
#[utoipa::path(get, path = "/v1/suppressions", tag = "privacy", params(PageQuery),
    responses((status = 200, body = Page<Suppression>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["privacy:write"])))]
pub async fn list_suppressions(
    principal: Principal,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Scope::PrivacyWrite)?;
    let limit = query.limit()?;
    let items = state
        .db
        .timed(store::list(&state.db, query.uuid_cursor()?, limit + 1))
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
