//! Credit accounts: balances, admin deposits and transfers between users.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    db::accounts::{Deposit, GetAccount, ListTransfers, MakeTransfer},
    domain::{
        money::validate_amount,
        paging::Page,
        shop::{validate_transfer, Account, Transfer},
        user::Permission,
    },
    http::auth_user::AuthUser,
    http::error::AppError,
    http::extract::{Json, Query},
    http::{event_position, idempotency, paging::PageQuery},
    state::AppState,
};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"amount_cents": 5000})))]
pub struct DepositRequest {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount_cents: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"to_user_id": "0193a5e2-7c1d-7b4e-9f0a-5d2c8e1b4a73", "amount_cents": 250})))]
pub struct TransferRequest {
    /// Another user's id.
    #[schema(format = Uuid)]
    pub to_user_id: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub amount_cents: i64,
}

/// The caller's balance.
#[utoipa::path(get, path = "/api/v1/account", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Account,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 401)))]
pub async fn mine(state: web::Data<AppState>, caller: AuthUser) -> Result<HttpResponse, AppError> {
    Ok(event_position::ok_json(state.db.read_positioned(GetAccount { user_id: caller.0.id }).await?))
}

/// Credit a user's account (admin). Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/accounts/{user_id}/deposits", tag = "accounts", request_body = DepositRequest,
    security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = Account), (status = 403), (status = 404, description = "No such user"),
        (status = 409, description = "Same Idempotency-Key still running"), (status = 422)))]
pub async fn deposit(
    state: web::Data<AppState>,
    caller: AuthUser,
    request: HttpRequest,
    user_id: web::Path<Uuid>,
    body: Json<DepositRequest>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::Deposit)?;
    let user_id = user_id.into_inner();
    validate_amount("amount_cents", body.amount_cents).map_err(|e| AppError::Validation(vec![e]))?;
    let idempotency = idempotency::key_of(&request, caller.0.id, format!("deposit:{user_id}"), &*body)?;
    let outcome = state
        .db
        .run(Deposit { user_id, amount_cents: body.amount_cents, deposited_by: caller.0.id, idempotency })
        .await?;
    idempotency::respond_created(outcome, None)
}

/// Send credit to another user. Honours `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/transfers", tag = "accounts", request_body = TransferRequest,
    security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, body = Transfer), (status = 404, description = "Unknown recipient"),
        (status = 409, description = "Insufficient funds, or the same Idempotency-Key still running"),
        (status = 422, description = "Amount not positive, or a transfer to oneself")))]
pub async fn transfer(
    state: web::Data<AppState>,
    caller: AuthUser,
    request: HttpRequest,
    body: Json<TransferRequest>,
) -> Result<HttpResponse, AppError> {
    let to_user_id =
        validate_transfer(caller.0.id, &body.to_user_id, body.amount_cents).map_err(AppError::Validation)?;
    let idempotency = idempotency::key_of(&request, caller.0.id, "transfer".into(), &*body)?;
    let outcome = state
        .db
        .run(MakeTransfer { from_user_id: caller.0.id, to_user_id, amount_cents: body.amount_cents, idempotency })
        .await?;
    idempotency::respond_created(outcome, None)
}

/// Transfers the caller sent or received, newest first.
#[utoipa::path(get, path = "/api/v1/transfers", tag = "accounts", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Transfer>)))]
pub async fn list_transfers(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let page = query.to_request()?;
    Ok(HttpResponse::Ok().json(state.db.run(ListTransfers { user_id: caller.0.id, page }).await?))
}
