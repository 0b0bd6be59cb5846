//! `/api/v1/users`: the caller's own record, and user management for admins.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    actors::event_position::Positioned,
    auth::AuthUser,
    db::users::{DeleteUser, FindActiveUser, ListUsers, UpdateUser, UserChanges},
    domain::{
        paging::Page,
        user::{Permission, Role, User, UserPatch},
    },
    error::AppError,
    http::extract::{Json, Query},
    http::{event_position, paging::PageQuery},
    state::AppState,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// A new password voids every token issued before it.
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// `admin` or `user`; admins only. A change voids the user's earlier tokens.
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 401, description = "No valid token")))]
pub async fn me(caller: AuthUser) -> HttpResponse {
    let position = caller.position();
    event_position::ok_json(Positioned { value: caller.0, position })
}

/// Every user (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<User>,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 403, description = "Not an admin")))]
pub async fn list(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::ListUsers)?;
    Ok(event_position::ok_json(state.db.read_positioned(ListUsers { page: query.to_request()? }).await?))
}

/// One user (admin, or the user themself; anyone else gets 404).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User,
        headers(("Event-Position" = i64, description = "Subscribe with this as `since` to miss nothing: every committed change this answer does not reflect has a larger event id"))),
        (status = 404, description = "No such user, or not yours")))]
pub async fn get(state: web::Data<AppState>, caller: AuthUser, id: web::Path<Uuid>) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    caller.may_access(id, Permission::ReadAnyUser)?;
    let read = state.db.read_positioned(FindActiveUser { id }).await?;
    let user = read.value.ok_or_else(|| AppError::NotFound("No such user.".into()))?;
    Ok(event_position::ok_json(Positioned { value: user, position: read.position }))
}

/// Change name, email, password (self or admin) or role (admin only).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = UpdateUserRequest, security(("bearer" = [])),
    responses(
        (status = 200, body = User),
        (status = 403, description = "A non-admin sent `role`"),
        (status = 404, description = "No such user, or not yours"),
        (status = 409, description = "Email taken, or demoting the last admin"),
        (status = 422, description = "Invalid fields"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<Uuid>,
    body: Json<UpdateUserRequest>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    caller.may_access(id, Permission::UpdateAnyUser)?;
    let UpdateUserRequest { name, email, password, role } = body.into_inner();
    if role.is_some() {
        caller.require(Permission::ChangeRoles)?;
    }
    let patch = UserPatch { name, email, password, role }.validate().map_err(AppError::Validation)?;
    let mut changes = UserChanges {
        name: patch.name,
        email: patch.email,
        role: patch.role.map(|role| role.as_str().to_owned()),
        ..UserChanges::default()
    };
    if let Some(password) = patch.password {
        changes.password_hash = Some(state.passwords.hash(password).await?);
    }
    let user = state.db.run(UpdateUser { id, changes }).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Delete a user (admin). Their tokens stop working at once; past orders stay.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    responses((status = 204), (status = 403, description = "Not an admin"), (status = 404, description = "No such user"),
        (status = 409, description = "The last admin cannot be deleted")))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, AppError> {
    caller.require(Permission::DeleteUsers)?;
    state.db.run(DeleteUser { id: id.into_inner() }).await?;
    Ok(HttpResponse::NoContent().finish())
}
