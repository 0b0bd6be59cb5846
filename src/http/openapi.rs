//! The OpenAPI 3 document, built from the handlers' annotations.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::http::{chaos, ops};

#[derive(OpenApi)]
#[openapi(
    info(title = "Storefront", description = "Shop backend: catalog, credit accounts, orders, live updates."),
    paths(ops::livez, ops::readyz, ops::metrics, ops::openapi_document, chaos::inject_fault),
    components(schemas(chaos::ChaosRequest, chaos::ChaosActor, chaos::ChaosFault)),
    modifiers(&SecuritySchemes),
    tags((name = "operations", description = "Probes, metrics and fault injection"))
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["bearer", "metrics_token", "chaos_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
