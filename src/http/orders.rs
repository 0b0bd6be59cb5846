//! Orders: place, list, read and cancel.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    actors::event_position::Positioned,
    db::orders::{CancelOrder, GetOrder, ListOrders, PlaceOrder},
    domain::{
        paging::{Page, PageRequest},
        shop::{validate_order_lines, Order, OrderStatus},
        user::Permission,
    },
    http::auth_user::AuthUser,
    http::error::{AppError, FieldError},
    http::extract::{Json, Query},
    http::{event_position, idempotency},
    state::AppState,
};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(format = Uuid)]
    pub product_id: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"items": [{"product_id": "0193a5e2-8f40-7c55-a1b2-3c4d5e6f7a8b", "quantity": 2}]})))]
pub struct PlaceOrderRequest {
    /// 1–100 lines, quantity 1–1000 each, each product once.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<OrderLineRequest>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct OrderQuery {
    /// `paid` or `cancelled`.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Admins only: one user's orders (ignored for others, who see their own).
    pub user_id: Option<Uuid>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 4294967295_i64)]
    pub page: Option<i64>,
    /// Items per page, 1 or more (values over 100 are clamped to 100).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub per_page: Option<i64>,
}

/// The query of one user's order list (the user is in the path).
#[derive(Debug, Deserialize, IntoParams)]
pub struct UserOrderQuery {
    /// `paid` or `cancelled`.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 4294967295_i64)]
    pub page: Option<i64>,
    /// Items per page, 1 or more (values over 100 are clamped to 100).
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub per_page: Option<i64>,
}

impl OrderQuery {
    fn parse(&self) -> Result<(Option<OrderStatus>, PageRequest), AppError> {
        parse_order_filter(self.status.as_deref(), self.page, self.per_page)
    }
}

fn parse_order_filter(
    status: Option<&str>,
    page: Option<i64>,
    per_page: Option<i64>,
) -> Result<(Option<OrderStatus>, PageRequest), AppError> {
    let mut errors = Vec::new();
    let status = match status {
        None => None,
        Some(raw) => OrderStatus::parse(raw).or_else(|| {
            errors.push(FieldError::new("status", "must be paid or cancelled"));
            None
        }),
    };
    let page = PageRequest::new(page, per_page).map_err(|e| errors.extend(e)).ok();
    match page {
        Some(page) if errors.is_empty() => Ok((status, page)),
        _ => Err(AppError::Validation(errors)),
    }
}

/// Buy: stock taken, balance debited, order stored, all or nothing. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/orders", operation_id = "place_order", tag = "orders", request_body = PlaceOrderRequest,
    security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = Order),
        (status = 409, description = "Insufficient stock (`product_ids` lists them) or funds, or the same Idempotency-Key still running"),
        (status = 422, description = "Invalid lines, or an unknown or inactive product")))]
pub async fn place(
    state: web::Data<AppState>,
    caller: AuthUser,
    request: HttpRequest,
    body: Json<PlaceOrderRequest>,
) -> Result<HttpResponse, AppError> {
    let raw: Vec<(String, i64)> = body.items.iter().map(|line| (line.product_id.clone(), line.quantity)).collect();
    let lines = validate_order_lines(&raw).map_err(AppError::Validation)?;
    let idempotency = idempotency::key_of(&request, caller.0.id, "order".into(), &*body)?;
    let outcome = state.db.run(PlaceOrder { user_id: caller.0.id, lines, idempotency }).await?;
    idempotency::respond_created(outcome, Some("/api/v1/orders"))
}

/// The caller's orders, newest first; admins see everyone's (or one user's with `user_id`).
#[utoipa::path(get, path = "/api/v1/orders", operation_id = "list_orders", tag = "orders", params(OrderQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Order>,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 422)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: Query<OrderQuery>,
) -> Result<HttpResponse, AppError> {
    let (status, page) = query.parse()?;
    let user_id = if caller.can(Permission::SeeAllOrders) { query.user_id } else { Some(caller.0.id) };
    Ok(event_position::ok_json(state.db.read_positioned(ListOrders { user_id, status, page }).await?))
}

/// A user's orders (the user themself, or an admin).
#[utoipa::path(get, path = "/api/v1/users/{id}/orders", operation_id = "list_user_orders", tag = "orders", params(("id" = Uuid, Path), UserOrderQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Order>,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 404, description = "Not yours")))]
pub async fn list_for_user(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<Uuid>,
    query: Query<UserOrderQuery>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    caller.may_access(id, Permission::SeeAllOrders)?;
    let (status, page) = parse_order_filter(query.status.as_deref(), query.page, query.per_page)?;
    Ok(event_position::ok_json(state.db.read_positioned(ListOrders { user_id: Some(id), status, page }).await?))
}

/// One order (its owner, or an admin).
#[utoipa::path(get, path = "/api/v1/orders/{id}", operation_id = "get_order", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = Order,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 404, description = "No such order, or not yours")))]
pub async fn get(state: web::Data<AppState>, caller: AuthUser, id: web::Path<Uuid>) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::NotFound("No such order.".into());
    let read = state.db.read_positioned(GetOrder { id: id.into_inner() }).await?;
    let order = read.value.ok_or_else(not_found)?;
    caller.may_access(order.user_id, Permission::SeeAllOrders).map_err(|_| not_found())?;
    Ok(event_position::ok_json(Positioned { value: order, position: read.position }))
}

/// Cancel a paid order: stock restored, total refunded, all or nothing.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", operation_id = "cancel_order", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 404, description = "No such order, or not yours"),
        (status = 409, description = "Already cancelled")))]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    let order = state
        .db
        .run(CancelOrder {
            id: id.into_inner(),
            requested_by: caller.0.id,
            may_cancel_any: caller.can(Permission::CancelAnyOrder),
        })
        .await?;
    Ok(HttpResponse::Ok().json(order))
}
