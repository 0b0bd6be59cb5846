//! Access tokens: HS256 JWTs with `iss`, `aud`, `sub`, `role`, `iat`, `nbf`, `exp`.
//! Verification pins the algorithm and checks the signature and every time and party claim.

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{config::Secret, domain::user::Role};

pub const ISSUER: &str = "storefront";
pub const AUDIENCE: &str = "storefront-api";
/// Clock skew tolerated between replicas, in seconds.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// The user's token generation at issue; tokens from before a password or role
    /// change carry an older one and are refused.
    #[serde(default)]
    pub gen: i64,
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub user_id: Uuid,
    pub generation: i64,
    /// A live connection opened with the token ends then.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Why no token came out: the bearer's (any defect of the token is the same answer, so a
/// client learns nothing about which check failed) or ours (signing failed).
#[derive(Debug, derive_more::Display)]
pub enum TokenError {
    #[display("the access token is missing, invalid or expired")]
    Invalid,
    #[display("cannot sign token: {_0}")]
    Unsigned(jsonwebtoken::errors::Error),
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid => None,
            Self::Unsigned(cause) => Some(cause),
        }
    }
}

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
}

impl TokenKeys {
    pub fn new(secret: &Secret, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            ttl,
        }
    }

    pub fn issue(&self, user_id: Uuid, role: Role, generation: i64) -> Result<IssuedToken, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: user_id.to_string(),
            role,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl),
            gen: generation,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(TokenError::Unsigned)?;
        Ok(IssuedToken { token, expires_in: self.ttl.as_secs() })
    }

    /// The user id of a valid token; any defect is the same `TokenError::Invalid`.
    pub fn verify(&self, token: &str) -> Result<Uuid, TokenError> {
        self.verify_claims(token).map(|claims| claims.user_id)
    }

    /// The user id and token generation of a valid token.
    pub fn verify_claims(&self, token: &str) -> Result<VerifiedClaims, TokenError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|error| {
            tracing::debug!(%error, "token rejected");
            TokenError::Invalid
        })?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| TokenError::Invalid)?;
        let expires_at = chrono::DateTime::from_timestamp(data.claims.exp, 0).ok_or(TokenError::Invalid)?;
        Ok(VerifiedClaims { user_id, generation: data.claims.gen, expires_at })
    }
}
