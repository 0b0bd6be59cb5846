//! The OpenAPI 3 document, built from the handlers' annotations.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{
    domain::{
        paging::Page,
        user::{Role, User},
    },
    http::{auth, chaos, ops, users},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Storefront", description = "Shop backend: catalog, credit accounts, orders, live updates."),
    paths(
        ops::livez, ops::readyz, ops::metrics, ops::openapi_document, chaos::inject_fault,
        auth::register, auth::login,
        users::me, users::list, users::get, users::update, users::delete,
    ),
    components(schemas(
        chaos::ChaosRequest, chaos::ChaosActor, chaos::ChaosFault,
        auth::RegisterRequest, auth::LoginRequest, auth::TokenResponse,
        users::UpdateUserRequest, User, Role, Page<User>,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Probes, metrics and fault injection"),
        (name = "auth", description = "Registration and sign-in"),
        (name = "users", description = "The caller's record and user management"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["bearer", "metrics_token", "chaos_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
            );
        }
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
