//! `AuthUser`: the caller behind a valid bearer token, looked up fresh so that a deleted
//! user's tokens stop working at once and role changes apply to the next request.

use actix_web::{dev::Payload, web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::{auth_header::bearer_token, middleware::rate_limit::VerifiedToken};
use crate::{
    domain::user::{Permission, User},
    http::error::AppError,
    state::AppState,
};

/// The caller, and the event position of the read that found the user (the cache entry's).
#[derive(Debug, Clone)]
pub struct AuthUser(pub User, i64);

impl AuthUser {
    /// Where the event stream stood before the caller's record was read (`Event-Position`).
    pub fn position(&self) -> i64 {
        self.1
    }

    pub fn can(&self, permission: Permission) -> bool {
        self.0.role.can(permission)
    }

    /// Refuses with 403 unless the caller's role grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), AppError> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(AppError::Forbidden("Your role does not allow this.".into()))
        }
    }

    /// The caller's own records, or anyone's with `permission`. Others' records answer
    /// 404, so their existence is not revealed.
    pub fn may_access(&self, owner: uuid::Uuid, permission: Permission) -> Result<(), AppError> {
        if self.0.id == owner || self.can(permission) {
            Ok(())
        } else {
            Err(AppError::NotFound("No such resource.".into()))
        }
    }
}

fn unauthorized() -> AppError {
    AppError::Unauthorized("The access token is missing, invalid or expired.".into())
}

impl FromRequest for AuthUser {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let verified = req.extensions().get::<VerifiedToken>().map(|token| token.0);
        let token = bearer_token(req).map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| AppError::Internal("application state missing".into()))?;
            let claims = match verified {
                Some(claims) => claims,
                None => state.tokens.verify_claims(&token.ok_or_else(unauthorized)?)?,
            };
            let read = state.cache.user_with_position(claims.user_id).await?;
            let user = read.value.ok_or_else(unauthorized)?;
            // A password or role change since the token was issued voids it.
            if user.token_generation != claims.generation {
                return Err(unauthorized());
            }
            Ok(AuthUser(user, read.position))
        })
    }
}
