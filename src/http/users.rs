//! `/api/v1/users`: the caller's own record, and user management for admins.

use std::fmt;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    actors::event_position::Positioned,
    db::users::{
        AbandonCredentialChange, Authorization, BeginCredentialChange, Charge, DeleteUser, FindActiveUser, FinishLogin,
        ListUsers, LoginOutcome, Reauthentication, UpdateUser, UserChanges,
    },
    domain::redact,
    domain::{
        paging::Page,
        user::{Permission, Role, User, UserPatch},
    },
    http::auth_user::AuthUser,
    http::error::AppError,
    http::extract::{Json, Query},
    http::{event_position, middleware::rate_limit::client_ip, paging::PageQuery},
    state::AppState,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"name": "Ada King"}),
    json!({"password": "a new long secret", "current_password": "correct horse battery"}),
    json!({"email": "ada.king@example.com", "current_password": "correct horse battery"}),
))]
pub struct UpdateUserRequest {
    /// 1 to 100 characters after trimming; no control, format or other invisible characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// A new email voids every token issued before it. Changing your own needs
    /// `current_password`.
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// A new password voids every token issued before it. Changing your own needs
    /// `current_password`.
    #[schema(min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// `admin` or `user`; admins only. A change voids the user's earlier tokens.
    #[schema(value_type = Option<Role>)]
    pub role: Option<String>,
    /// Your password as it is now: required to change your own `password` or `email`,
    /// checked like a sign-in (a wrong one counts as a failed sign-in for your email).
    /// Not needed (and not checked) for anything else, nor for an admin's reset of another user.
    pub current_password: Option<String>,
}

/// The user after the change. When the change voided the caller's own tokens (their own
/// password, email or role), a fresh access token for the caller comes with it, so the
/// client that made the change stays signed in; every other token of theirs is void.
#[derive(Serialize, ToSchema)]
pub struct UpdatedUser {
    #[serde(flatten)]
    pub user: User,
    /// Present when the caller's earlier tokens were voided: use this one from now on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// `Bearer`, with `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Seconds `access_token` is valid for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

impl fmt::Debug for UpdateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { name, email, password, role, current_password } = self;
        f.debug_struct("UpdateUserRequest")
            .field("name", name)
            .field("email", email)
            .field("password", &redact::optional(password))
            .field("role", role)
            .field("current_password", &redact::optional(current_password))
            .finish()
    }
}

impl fmt::Debug for UpdatedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { user, access_token, token_type, expires_in } = self;
        f.debug_struct("UpdatedUser")
            .field("user", user)
            .field("access_token", &redact::optional(access_token))
            .field("token_type", token_type)
            .field("expires_in", expires_in)
            .finish()
    }
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
#[utoipa::path(get, path = "/api/v1/users", operation_id = "list_users", tag = "users", params(PageQuery), security(("bearer" = [])),
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
#[utoipa::path(get, path = "/api/v1/users/{id}", operation_id = "get_user", tag = "users", security(("bearer" = [])),
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

/// Change name, email, password (self or admin) or role (admin only). Changing your own
/// password or email needs `current_password`; an admin resetting another user's needs none.
#[utoipa::path(patch, path = "/api/v1/users/{id}", operation_id = "update_user", tag = "users", request_body = UpdateUserRequest, security(("bearer" = [])),
    responses(
        (status = 200, body = UpdatedUser, description = "Changed; carries a fresh access token when the caller's own tokens were voided"),
        (status = 401, description = "No valid token, or the token was voided (a password, email or role change) while the request was under way: nothing changed"),
        (status = 403, description = "A non-admin sent `role` (`forbidden`), or changing your own password or email without the right `current_password` (`urn:storefront:problem:reauthentication-required`)"),
        (status = 404, description = "No such user, or not yours"),
        (status = 409, description = "Email taken, or demoting the last admin"),
        (status = 422, description = "Invalid fields"),
        (status = 429, description = "Too many failed sign-ins for your email, or this account's password or email changed 5 times within the hour, or an admin reset others' 20 times; see Retry-After"),
    ))]
pub async fn update(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: AuthUser,
    id: web::Path<Uuid>,
    body: Json<UpdateUserRequest>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    caller.may_access(id, Permission::UpdateAnyUser)?;
    let UpdateUserRequest { name, email, password, role, current_password } = body.into_inner();
    if role.is_some() {
        caller.require(Permission::ChangeRoles)?;
    }
    let patch = UserPatch { name, email, password, role }.validate().map_err(AppError::Validation)?;
    let own = caller.0.id == id;
    let authorized = Authorization { user_id: caller.0.id, token_generation: caller.0.token_generation };
    // Sending one's own email unchanged (a whole profile form, say) changes no credential.
    let email_changes = patch.email.as_ref().is_some_and(|email| !own || *email != caller.0.email);
    let changes = UserChanges {
        name: patch.name,
        email: patch.email.filter(|_| email_changes),
        role: patch.role.map(|role| role.as_str().to_owned()),
        password_hash: None,
    };
    let user = if patch.password.is_some() || email_changes {
        let reauthentication = match (own, current_password) {
            (false, _) => None,
            (true, Some(current_password)) => {
                let client = client_ip(&request, &state.config.server.trusted_proxies)
                    .map_or_else(|| "unknown".into(), |ip| ip.to_string());
                Some((client, current_password))
            }
            (true, None) => {
                return Err(AppError::ReauthenticationRequired(
                    "Changing your own password or email needs `current_password`.".into(),
                ))
            }
        };
        let charged_to = if own { Charge::Own } else { Charge::ResetBy(caller.0.id) };
        let change = CredentialChangeRequest { id, authorized, charged_to, changes, new_password: patch.password };
        change_credentials(&state, change, reauthentication).await?
    } else {
        state.db.run(UpdateUser { id, changes, authorized }).await?
    };
    // The caller's own tokens were voided (their password, email or role changed): this
    // client gets a fresh one, in the generation the change began.
    let fresh = (own && user.token_generation != caller.0.token_generation)
        .then(|| state.tokens.issue(user.id, user.role, user.token_generation))
        .transpose()?;
    let mut response = HttpResponse::Ok();
    if fresh.is_some() {
        response.insert_header((header::CACHE_CONTROL, "no-store"));
    }
    Ok(response.json(UpdatedUser {
        token_type: fresh.as_ref().map(|_| "Bearer"),
        expires_in: fresh.as_ref().map(|issued| issued.expires_in),
        access_token: fresh.map(|issued| issued.token),
        user,
    }))
}

/// A password or email change to make, of user `id`.
struct CredentialChangeRequest {
    id: Uuid,
    authorized: Authorization,
    charged_to: Charge,
    changes: UserChanges,
    new_password: Option<String>,
}

/// A password or email change: every check that costs no hash first (in one transaction:
/// the email free, the change limit of whoever pays for it, the sign-in throttle), then the
/// current password (when it is the caller's own change), then the new password's hash,
/// then the write, which happens only if the caller's token generation has not moved
/// meanwhile. A change that does not happen is not counted against anyone.
async fn change_credentials(
    state: &AppState,
    request: CredentialChangeRequest,
    // The caller's client address and current password, when it is their own change.
    reauthentication: Option<(String, String)>,
) -> Result<User, AppError> {
    let CredentialChangeRequest { id, authorized, charged_to, mut changes, new_password } = request;
    let (client, current_password) = reauthentication.unzip();
    let begin = BeginCredentialChange {
        user_id: id,
        new_email: changes.email.clone(),
        reauthenticate_from: client,
        charged_to,
        authorized,
    };
    let plan = state.db.run(begin).await?;
    let reservation = plan.reservation;
    let changed = async {
        let check = match (plan.reauthentication, current_password) {
            (Some(found), Some(current_password)) => Some((found, current_password)),
            (None, None) => None,
            _ => return Err(AppError::Internal("a reauthentication was asked for but not prepared".into())),
        };
        if let Some((found, current_password)) = check {
            let Reauthentication { email, client, attempt_id, password_hash } = found;
            let outcome = match state.passwords.verify(current_password, Some(password_hash)).await {
                Ok(true) => LoginOutcome::Succeeded,
                // The attempt stays recorded as a failed sign-in.
                Ok(false) => return Err(AppError::ReauthenticationRequired("The current password is wrong.".into())),
                Err(error) => {
                    state.db.run(FinishLogin { email, client, attempt_id, outcome: LoginOutcome::Unchecked }).await?;
                    return Err(error.into());
                }
            };
            state.db.run(FinishLogin { email, client, attempt_id, outcome }).await?;
        }
        if let Some(password) = new_password {
            changes.password_hash = Some(state.passwords.hash(password).await?);
        }
        Ok(state.db.run(UpdateUser { id, changes, authorized }).await?)
    }
    .await;
    if changed.is_err() {
        // Best effort: if even this fails, the account is counted for a change it did not
        // make, which errs on the side of the limit.
        if let Err(error) = state.db.run(AbandonCredentialChange { reservation }).await {
            tracing::warn!(%error, "could not take back an abandoned credential change");
        }
    }
    changed
}

/// Delete a user (admin). Their tokens stop working at once; past orders stay.
#[utoipa::path(delete, path = "/api/v1/users/{id}", operation_id = "delete_user", tag = "users", security(("bearer" = [])),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::parse_json;

    #[test]
    fn debug_output_holds_no_password_or_token() {
        let body = br#"{"name":"Ada","password":"new-secret-1","current_password":"old-secret-2"}"#;
        let request: UpdateUserRequest = parse_json(body).unwrap();
        let user = User {
            id: Uuid::nil(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            role: Role::User,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            token_generation: 1,
        };
        let updated = UpdatedUser {
            user,
            access_token: Some("eyJ-secret-token".into()),
            token_type: Some("Bearer"),
            expires_in: Some(900),
        };
        for printed in [format!("{request:?}"), format!("{updated:?}"), format!("{request:#?}")] {
            for secret in ["new-secret-1", "old-secret-2", "eyJ-secret-token"] {
                assert!(!printed.contains(secret), "{printed}");
            }
            assert!(printed.contains("[redacted]") && printed.contains("Ada"), "{printed}");
        }
    }
}
