//! `POST /api/v1/auth/register` and `POST /api/v1/auth/login`.

use std::fmt;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    db::users::{BeginLogin, CreateUser, EmailIsFree, FinishLogin, LoginAttempt, LoginOutcome},
    domain::redact::Redacted,
    domain::user::{email_key, validate_new_user, NewUser, Role, User},
    http::error::AppError,
    http::{extract::Json, middleware::rate_limit::client_ip},
    state::AppState,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada Lovelace"})))]
pub struct RegisterRequest {
    /// An email address: ASCII, compared without regard to case.
    #[schema(max_length = 254)]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    /// 1 to 100 characters, after trimming; no control, format or other invisible characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"email": "ada@example.com", "password": "correct horse battery"})))]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { email, password: _, name } = self;
        f.debug_struct("RegisterRequest")
            .field("email", email)
            .field("password", &Redacted)
            .field("name", name)
            .finish()
    }
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { email, password: _ } = self;
        f.debug_struct("LoginRequest").field("email", email).field("password", &Redacted).finish()
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { access_token: _, token_type, expires_in } = self;
        f.debug_struct("TokenResponse")
            .field("access_token", &Redacted)
            .field("token_type", token_type)
            .field("expires_in", expires_in)
            .finish()
    }
}

/// Create an account (role `user`, balance 0).
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, description = "Registered", body = User),
    (status = 409, description = "Email taken"),
    (status = 422, description = "Invalid email, password (8–128 chars) or name (1–100 chars)"),
))]
pub async fn register(state: web::Data<AppState>, body: Json<RegisterRequest>) -> Result<HttpResponse, AppError> {
    let RegisterRequest { email, password, name } = body.into_inner();
    let NewUser { email, name } = validate_new_user(&email, &password, &name).map_err(AppError::Validation)?;
    // A taken email is answered before the expensive hash.
    state.db.run(EmailIsFree { email: email.clone() }).await?;
    let password_hash = state.passwords.hash(password).await?;
    let user = state.db.run(CreateUser { email, name, role: Role::User, password_hash }).await?;
    Ok(HttpResponse::Created().insert_header((header::LOCATION, format!("/api/v1/users/{}", user.id))).json(user))
}

/// Exchange email and password for an access token. A wrong password and an unknown email
/// get the same 401, after the same amount of work.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, description = "Signed in", body = TokenResponse),
    (status = 401, description = "Wrong email or password"),
    (status = 429, description = "Too many failed sign-ins for this email; see Retry-After"),
))]
pub async fn login(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, AppError> {
    let LoginRequest { email, password } = body.into_inner();
    let email = email_key(&email);
    let client =
        client_ip(&request, &state.config.server.trusted_proxies).map_or_else(|| "unknown".into(), |ip| ip.to_string());
    let LoginAttempt { credentials, attempt_id } =
        state.db.run(BeginLogin { email: email.clone(), client: client.clone() }).await?;
    let (account, hash) = match credentials {
        Some(found) => (Some((found.user_id, found.role, found.token_generation)), Some(found.password_hash)),
        None => (None, None),
    };
    let verified = match state.passwords.verify(password, hash).await {
        Ok(verified) => verified,
        Err(error) => {
            state.db.run(FinishLogin { email, client, attempt_id, outcome: LoginOutcome::Unchecked }).await?;
            return Err(error.into());
        }
    };
    match account {
        Some((user_id, role, generation)) if verified => {
            state.db.run(FinishLogin { email, client, attempt_id, outcome: LoginOutcome::Succeeded }).await?;
            let issued = state.tokens.issue(user_id, role, generation)?;
            Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(TokenResponse {
                access_token: issued.token,
                token_type: "Bearer",
                expires_in: issued.expires_in,
            }))
        }
        _ => Err(AppError::Unauthorized("The email or password is wrong.".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::parse_json;

    #[test]
    fn debug_output_holds_no_password_or_token() {
        let secret = "hunter2-hunter2";
        let register: RegisterRequest =
            parse_json(format!(r#"{{"email":"a@example.com","password":"{secret}","name":"Ada"}}"#).as_bytes())
                .unwrap();
        let login: LoginRequest =
            parse_json(format!(r#"{{"email":"a@example.com","password":"{secret}"}}"#).as_bytes()).unwrap();
        let token = TokenResponse { access_token: secret.into(), token_type: "Bearer", expires_in: 900 };
        for printed in [format!("{register:?}"), format!("{login:?}"), format!("{token:?}"), format!("{token:#?}")] {
            assert!(!printed.contains(secret), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
        }
        assert!(format!("{login:?}").contains("a@example.com"), "what is no secret still shows");
    }
}
