//! `/api/v1/products`: the catalog. Anyone reads; admins write.

use actix_web::{
    http::header::{self, HeaderValue},
    web, HttpRequest, HttpResponse,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    db::catalog::{CreateProduct, DeleteProduct, ListProducts, UpdateProduct},
    domain::{
        catalog::{none_match_hits, IfMatch, Product, ProductFilter, ProductInput, ProductStatus},
        paging::{Page, PageRequest},
        user::Permission,
    },
    http::auth_user::AuthUser,
    http::error::AppError,
    http::{
        event_position,
        extract::{Json, Query},
    },
    state::AppState,
};

#[derive(Debug, Deserialize, IntoParams)]
pub struct ProductQuery {
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// `active` or `archived`.
    #[param(value_type = Option<ProductStatus>)]
    pub status: Option<String>,
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub min_price_cents: Option<i64>,
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub max_price_cents: Option<i64>,
    /// `created_at` (default), `name` or `price_cents`.
    #[param(value_type = Option<ProductSortKey>)]
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    #[param(value_type = Option<SortOrder>)]
    pub order: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 4294967295_i64)]
    pub page: Option<i64>,
    /// Items per page, 1 or more (values over 100 are clamped to 100).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub per_page: Option<i64>,
}

/// What a product list can be sorted by.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ProductSortKey {
    CreatedAt,
    Name,
    PriceCents,
}

/// A sort direction.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"name": "Blue widget", "description": "A widget, blue.\nFits every standard socket.", "price_cents": 1999, "stock": 100, "status": "active"}),
))]
pub struct CreateProductRequest {
    /// 1 to 200 characters, after trimming; no control, format or other invisible characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// At most 2000 characters; may span lines.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000_i64)]
    pub stock: i64,
    /// `active` (default) or `archived`.
    #[schema(value_type = Option<ProductStatus>)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"price_cents": 1799, "stock": 80}), json!({"status": "archived"})))]
pub struct UpdateProductRequest {
    /// 1 to 200 characters, after trimming; no control, format or other invisible characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 100_000_000_000_i64)]
    pub price_cents: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000_i64)]
    pub stock: Option<i64>,
    #[schema(value_type = Option<ProductStatus>)]
    pub status: Option<String>,
}

fn with_etag(mut response: HttpResponse, product: &Product) -> HttpResponse {
    if let Ok(value) = HeaderValue::from_str(&product.etag()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn header_text(request: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|value| value.to_str().ok())
}

/// The request's `If-Match`, if any; one that is not `*` or a list of entity tags is 422
/// (several header lines are one list, as RFC 9110 says).
fn if_match(request: &HttpRequest) -> Result<Option<IfMatch>, AppError> {
    let mut lines = request.headers().get_all(header::IF_MATCH).peekable();
    if lines.peek().is_none() {
        return Ok(None);
    }
    let joined: Option<Vec<&str>> = lines.map(|value| value.to_str().ok()).collect();
    joined.and_then(|lines| IfMatch::parse(&lines.join(", "))).map(Some).ok_or_else(|| {
        AppError::invalid("If-Match", "must be * or a comma-separated list of entity tags (\"…\" or W/\"…\")")
    })
}

/// Search and page through the catalog.
#[utoipa::path(get, path = "/api/v1/products", operation_id = "list_products", tag = "catalog", params(ProductQuery),
    responses((status = 200, body = Page<Product>,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 422, description = "Invalid filter")))]
pub async fn list(state: web::Data<AppState>, query: Query<ProductQuery>) -> Result<HttpResponse, AppError> {
    let q = query.into_inner();
    let page = PageRequest::new(q.page, q.per_page);
    let filter = ProductFilter::parse(
        q.q.as_deref(),
        q.status.as_deref(),
        q.min_price_cents,
        q.max_price_cents,
        q.sort.as_deref(),
        q.order.as_deref(),
    );
    let (page, filter) = match (page, filter) {
        (Ok(page), Ok(filter)) => (page, filter),
        (page, filter) => {
            let errors = page.err().into_iter().chain(filter.err()).flatten().collect();
            return Err(AppError::Validation(errors));
        }
    };
    Ok(event_position::ok_json(state.db.read_positioned(ListProducts { filter, page }).await?))
}

/// One product, with an `ETag`; `If-None-Match` with the current tag answers 304.
/// The body and the tag come pre-rendered from the cache and are shared, not copied; a
/// cached answer carries the position its entry was loaded at.
#[utoipa::path(get, path = "/api/v1/products/{id}", operation_id = "get_product", tag = "catalog",
    params(("If-None-Match" = Option<String>, Header, description = "Answers 304 when it names the current tag (weak comparison)")),
    responses((status = 200, body = Product, headers(("ETag" = String, description = "The product's version, e.g. `\"3\"`"),
            ("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 304, description = "Not modified", headers(("ETag" = String),
            ("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))), (status = 404)))]
pub async fn get(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let read = state.cache.product(id.into_inner()).await?;
    let product = read.value.ok_or_else(|| AppError::NotFound("No such product.".into()))?;
    let etag = HeaderValue::from_maybe_shared(product.etag)
        .map_err(|_| AppError::Internal("a product's ETag is not a header value".into()))?;
    if header_text(&request, header::IF_NONE_MATCH).is_some_and(|tag| none_match_hits(tag, product.version)) {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .insert_header(event_position::header(read.position))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .insert_header((header::ETAG, etag))
        .insert_header(event_position::header(read.position))
        .body(product.json))
}

/// Add a product (admin).
#[utoipa::path(post, path = "/api/v1/products", operation_id = "create_product", tag = "catalog", request_body = CreateProductRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Product, headers(("ETag" = String, description = "The new product's version"),
            ("Location" = String, description = "`/api/v1/products/{id}`"))),
        (status = 403), (status = 422, description = "Invalid fields")))]
pub async fn create(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<CreateProductRequest>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::ManageCatalog)?;
    let CreateProductRequest { name, description, price_cents, stock, status } = body.into_inner();
    let input = ProductInput {
        name: Some(name),
        description: Some(description.unwrap_or_default()),
        price_cents: Some(price_cents),
        stock: Some(stock),
        status,
    };
    let changes = input.validate().map_err(AppError::Validation)?;
    let product = state.db.run(CreateProduct { changes }).await?;
    let response = HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/products/{}", product.id)))
        .json(&product);
    Ok(with_etag(response, &product))
}

/// Change any subset of a product's fields (admin). `If-Match` makes it conditional.
#[utoipa::path(patch, path = "/api/v1/products/{id}", operation_id = "update_product", tag = "catalog", request_body = UpdateProductRequest,
    security(("bearer" = [])),
    params(("If-Match" = Option<String>, Header,
        description = "Apply the change only to this version: `*` or entity tags such as `\"3\"` (strong comparison; a weak tag never matches)")),
    responses((status = 200, body = Product, headers(("ETag" = String, description = "The product's new version"))),
        (status = 403), (status = 404),
        (status = 412, description = "If-Match does not match the current ETag"),
        (status = 422, description = "Invalid fields, or an If-Match that is not `*` or a list of entity tags")))]
pub async fn update(
    state: web::Data<AppState>,
    caller: AuthUser,
    request: HttpRequest,
    id: web::Path<Uuid>,
    body: Json<UpdateProductRequest>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::ManageCatalog)?;
    let UpdateProductRequest { name, description, price_cents, stock, status } = body.into_inner();
    let changes =
        ProductInput { name, description, price_cents, stock, status }.validate().map_err(AppError::Validation)?;
    let if_match = if_match(&request)?;
    let id = id.into_inner();
    let product = state.db.run(UpdateProduct { id, changes, if_match }).await?;
    Ok(with_etag(HttpResponse::Ok().json(&product), &product))
}

/// Remove a product (admin). Past orders keep their snapshots of it.
#[utoipa::path(delete, path = "/api/v1/products/{id}", operation_id = "delete_product", tag = "catalog", security(("bearer" = [])),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::ManageCatalog)?;
    state.db.run(DeleteProduct { id: id.into_inner() }).await?;
    Ok(HttpResponse::NoContent().finish())
}
