//! The OpenAPI 3 document, built from the handlers' annotations.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{
    actors::{
        breaker::BreakerState,
        report::{ActorKind, ActorReport, Instances, QueueReport, RestartSummary, SupervisionReport, SupervisionState},
    },
    domain::{
        catalog::{Product, ProductStatus},
        paging::Page,
        shop::{Account, Order, OrderItem, OrderStatus, Transfer},
        user::{Role, User},
    },
    http::{
        accounts, auth, chaos, dashboard, docs, middleware::problem::PROBLEM_JSON, ops, ops_api, orders, products,
        users, ws,
    },
    state::AppState,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Storefront",
        description = "Shop backend: users, catalog, credit accounts, transfers and orders, with committed changes pushed live over a WebSocket (GET /api/v1/ws) and operators' views under /api/v1/ops."
    ),
    paths(
        ops::livez, ops::readyz, ops::metrics, openapi_document, docs::docs_file, chaos::inject_fault,
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
        ops_api::LatencyBucket, ActorReport, ActorKind, Instances, QueueReport, RestartSummary, SupervisionReport,
        SupervisionState, BreakerState,
        auth::RegisterRequest, auth::LoginRequest, auth::TokenResponse,
        users::UpdateUserRequest, users::UpdatedUser, User, Role, Page<User>,
        products::CreateProductRequest, products::UpdateProductRequest, Product, ProductStatus, Page<Product>,
        products::ProductSortKey, products::SortOrder,
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

/// The document as served: the annotations, completed with what every route can answer
/// (see `complete`), and `/ops/chaos` only when it is mounted (`CHAOS_TOKEN` set).
pub fn document_value(chaos_mounted: bool) -> Value {
    let mut document = serde_json::to_value(document()).unwrap_or_else(|_| json!({}));
    complete(&mut document, chaos_mounted);
    document
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi_document(state: web::Data<AppState>) -> HttpResponse {
    let chaos_mounted = state.config.ops.chaos_token.is_some();
    HttpResponse::Ok().content_type("application/json").body(document_json(chaos_mounted))
}

/// The document as JSON, built on first use: it never changes while the process runs.
fn document_json(chaos_mounted: bool) -> &'static str {
    static WITH_CHAOS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static WITHOUT_CHAOS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let cell = if chaos_mounted { &WITH_CHAOS } else { &WITHOUT_CHAOS };
    cell.get_or_init(|| document_value(chaos_mounted).to_string())
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Adds the answers that the layers around the handlers give, so the document lists
/// every status a route can send: 401 where a token is needed, 400/413/415/422 where a
/// JSON body is read, 422 where a query is, 404 for an id in the path, 429 and 503 on
/// every `/api/v1` route (rate limit, shedding), 504 on writes (outcome unknown). Every
/// error is `application/problem+json` with the `Problem` schema.
fn complete(document: &mut Value, chaos_mounted: bool) {
    if !chaos_mounted {
        if let Some(paths) = document["paths"].as_object_mut() {
            paths.remove("/ops/chaos");
        }
    }
    if let Some(schemas) = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        schemas.insert("Problem".into(), problem_schema());
        if !chaos_mounted {
            for name in ["ChaosRequest", "ChaosActor", "ChaosFault"] {
                schemas.remove(name);
            }
        }
    }
    super::schema_rules::apply(document);
    add_links(document);
    let Some(paths) = document["paths"].as_object_mut() else { return };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(operation) = item.get_mut(method) else { continue };
            complete_operation(path, method, operation);
        }
    }
}

fn complete_operation(path: &str, method: &str, operation: &mut Value) {
    let api = path.starts_with("/api/v1/");
    let secured = operation["security"]
        .as_array()
        .is_some_and(|requirements| requirements.iter().all(|r| r.as_object().is_some_and(|r| !r.is_empty())));
    let has_body = operation.get("requestBody").is_some();
    // A query or header parameter is absent or a string: never JSON null.
    if let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
        parameters
            .iter_mut()
            .filter(|p| p["in"] == "query" || p["in"] == "header")
            .for_each(|p| drop_null(&mut p["schema"]));
    }
    let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
    let has_query = parameters.iter().any(|p| p["in"] == "query");
    let has_path = parameters.iter().any(|p| p["in"] == "path");
    let mut added: Vec<(&str, &str)> = Vec::new();
    if api {
        added.push(("429", "Rate limit exceeded; see Retry-After"));
        added.push(("503", "Overloaded or the database is unavailable; see Retry-After"));
        if method != "get" {
            added.push(("504", "The database did not confirm the change in time: the outcome is unknown"));
        }
    }
    if secured {
        added.push(("401", "The access token is missing, invalid or expired"));
    }
    if has_body {
        added.push(("400", "Malformed JSON, or a field of the wrong type (named in `errors`)"));
        added.push(("413", "The body is larger than 64 KiB"));
        added.push(("415", "The body is not application/json"));
        added.push(("422", "Missing, unknown or invalid fields (named in `errors`)"));
    }
    if has_query {
        added.push(("422", "Invalid query parameters (named in `errors`)"));
    }
    if has_path {
        added.push(("404", "No such resource (or the id in the path is not a UUID)"));
    }
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { return };
    for (status, description) in added {
        responses.entry(status).or_insert_with(|| json!({ "description": description }));
    }
    for (status, response) in responses.iter_mut() {
        let is_error = status.parse::<u16>().is_ok_and(|code| code >= 400);
        let has_other_content = response["content"].as_object().is_some_and(|content| !content.is_empty());
        if is_error && !has_other_content {
            response["content"] = json!({ PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } });
        }
    }
}

/// How a created resource's id leads to the operations that take it (OpenAPI links), for
/// clients and for stateful testing: (source path, method, status, link name, target
/// operationId, link object).
fn links() -> Vec<(&'static str, &'static str, &'static str, &'static str, Value)> {
    let id = "$response.body#/id";
    let by_id = |operation: &str, parameter: &str| json!({ "operationId": operation, "parameters": { parameter: id } });
    let newest =
        |operation: &str| json!({ "operationId": operation, "parameters": { "id": "$response.body#/data/0/id" } });
    vec![
        ("/api/v1/auth/register", "post", "201", "GetUser", by_id("get_user", "id")),
        ("/api/v1/auth/register", "post", "201", "UpdateUser", by_id("update_user", "id")),
        ("/api/v1/auth/register", "post", "201", "DeleteUser", by_id("delete_user", "id")),
        ("/api/v1/auth/register", "post", "201", "ListUserOrders", by_id("list_user_orders", "id")),
        ("/api/v1/auth/register", "post", "201", "Deposit", by_id("deposit", "user_id")),
        (
            "/api/v1/auth/register",
            "post",
            "201",
            "Transfer",
            json!({ "operationId": "transfer", "requestBody": { "to_user_id": id, "amount_cents": 1 } }),
        ),
        ("/api/v1/users/me", "get", "200", "GetUser", by_id("get_user", "id")),
        ("/api/v1/users/me", "get", "200", "ListUserOrders", by_id("list_user_orders", "id")),
        ("/api/v1/products", "post", "201", "GetProduct", by_id("get_product", "id")),
        (
            "/api/v1/products",
            "post",
            "201",
            "UpdateProduct",
            json!({ "operationId": "update_product", "parameters": { "id": id, "header.If-Match": "$response.header.ETag" } }),
        ),
        ("/api/v1/products", "post", "201", "DeleteProduct", by_id("delete_product", "id")),
        (
            "/api/v1/products",
            "post",
            "201",
            "Order",
            json!({ "operationId": "place_order", "requestBody": { "items": [{ "product_id": id, "quantity": 1 }] } }),
        ),
        (
            "/api/v1/products",
            "get",
            "200",
            "OrderTheFirst",
            json!({
                "operationId": "place_order",
                "requestBody": { "items": [{ "product_id": "$response.body#/data/0/id", "quantity": 1 }] },
            }),
        ),
        ("/api/v1/orders", "post", "201", "GetOrder", by_id("get_order", "id")),
        ("/api/v1/orders", "post", "201", "CancelOrder", by_id("cancel_order", "id")),
        ("/api/v1/orders", "get", "200", "GetTheNewest", newest("get_order")),
        ("/api/v1/orders", "get", "200", "CancelTheNewest", newest("cancel_order")),
    ]
}

fn add_links(document: &mut Value) {
    for (path, method, status, name, link) in links() {
        if let Some(response) =
            document.pointer_mut(&format!("/paths/{}/{method}/responses/{status}", path.replace('/', "~1")))
        {
            response["links"][name] = link;
        }
    }
}

/// `{"type": ["integer", "null"]}` → `{"type": "integer"}`; `{"oneOf": [{"type": "null"}, X]}` → X.
fn drop_null(schema: &mut Value) {
    if let Some(types) = schema["type"].as_array() {
        let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        if let [only] = kept.as_slice() {
            schema["type"] = only.clone();
        }
    }
    let one_of = schema["oneOf"]
        .as_array()
        .map(|alternatives| alternatives.iter().filter(|a| a["type"] != "null").cloned().collect::<Vec<Value>>());
    if let Some([only]) = one_of.as_deref() {
        *schema = only.clone();
    }
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "An RFC 9457 problem. Some problems carry more members (e.g. `product_ids`).",
        "required": ["type", "title", "status", "detail", "instance", "request_id"],
        "properties": {
            "type": { "type": "string", "description": "`urn:storefront:problem:<kind>`" },
            "title": { "type": "string" },
            "status": { "type": "integer", "minimum": 100, "maximum": 599 },
            "detail": { "type": "string" },
            "instance": { "type": "string" },
            "request_id": { "type": "string" },
            "errors": {
                "type": "array",
                "description": "For validation problems: each field that is wrong, and why",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": { "field": { "type": "string" }, "message": { "type": "string" } }
                }
            }
        },
        "additionalProperties": true
    })
}
