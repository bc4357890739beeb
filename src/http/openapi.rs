//! The OpenAPI 3 document, generated from the handlers' annotations so it cannot drift.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, computed, exports, health, ops, privacy, profiles, segments, tracking};

#[derive(OpenApi)]
#[openapi(
    info(title = "Kizuna", description = "Kizuna customer data platform API"),
    paths(
        tracking::batch, tracking::identify, tracking::track, tracking::page, tracking::screen,
        tracking::group, tracking::alias,
        admin::create_source, admin::list_sources, admin::get_source, admin::update_source,
        admin::delete_source, admin::create_api_key, admin::list_api_keys, admin::delete_api_key,
        profiles::get_profile, profiles::lookup, profiles::timeline, profiles::merges,
        segments::create, segments::list, segments::get, segments::replace, segments::delete,
        segments::preview, segments::evaluate, segments::members, segments::history,
        computed::create, computed::list, computed::delete, computed::refresh,
        health::health,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
        privacy::erase_profile, privacy::list_suppressions, privacy::unsuppress,
        exports::segment_export, exports::profiles_export, exports::events_export,
        exports::create, exports::get,
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "write_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}
