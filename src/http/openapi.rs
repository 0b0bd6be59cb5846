//! The OpenAPI 3 document, built from the handlers' annotations.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{
    actors::{
        breaker::BreakerState,
        report::{ActorKind, ActorReport, Instances, QueueReport, RestartSummary},
    },
    domain::{
        catalog::{Product, ProductStatus},
        paging::Page,
        shop::{Account, Order, OrderItem, OrderStatus, Transfer},
        user::{Role, User},
    },
    http::{accounts, auth, chaos, dashboard, docs, ops, ops_api, orders, products, users, ws},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Storefront", description = "Shop backend: users, catalog, credit accounts, transfers and orders."),
    paths(
        ops::livez, ops::readyz, ops::metrics, ops::openapi_document, docs::docs_file, chaos::inject_fault,
        dashboard::page, ops_api::actors, ops_api::restarts, ops_api::metrics_summary,
        auth::register, auth::login,
        users::me, users::list, users::get, users::update, users::delete,
        products::list, products::get, products::create, products::update, products::delete,
        accounts::mine, accounts::deposit, accounts::transfer, accounts::list_transfers,
        orders::place, orders::list, orders::list_for_user, orders::get, orders::cancel,
        ws::connect,
    ),
    components(schemas(
        chaos::ChaosRequest, chaos::ChaosActor, chaos::ChaosFault,
        ops_api::ActorsResponse, ops_api::RestartsResponse, ops_api::RestartEntry, ops_api::MetricsSummary,
        ops_api::LatencyBucket, ActorReport, ActorKind, Instances, QueueReport, RestartSummary, BreakerState,
        auth::RegisterRequest, auth::LoginRequest, auth::TokenResponse,
        users::UpdateUserRequest, User, Role, Page<User>,
        products::CreateProductRequest, products::UpdateProductRequest, Product, ProductStatus, Page<Product>,
        accounts::DepositRequest, accounts::TransferRequest, Account, Transfer, Page<Transfer>,
        orders::PlaceOrderRequest, orders::OrderLineRequest, Order, OrderItem, OrderStatus, Page<Order>,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Probes, metrics and fault injection"),
        (name = "auth", description = "Registration and sign-in"),
        (name = "users", description = "The caller's record and user management"),
        (name = "catalog", description = "Products"),
        (name = "accounts", description = "Balances, deposits and transfers"),
        (name = "orders", description = "Placing and cancelling orders"),
        (name = "live updates", description = "Committed changes pushed over a WebSocket"),
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

/// The document as JSON, built on first use: it never changes while the process runs.
pub fn document_json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string(&document()).unwrap_or_else(|_| "{}".to_owned()))
}
