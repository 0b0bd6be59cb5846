//! The HTTP error type. Every failure a client can see becomes an RFC 9457 problem; the
//! lower layers answer with errors of their own, which `problems.rs` maps to this one, and
//! the `http::middleware::problem` layer adds `instance` and `request_id` and writes the body.

use actix_web::{
    http::{header, StatusCode},
    HttpResponse, ResponseError,
};
use serde::Serialize;

pub use crate::domain::FieldError;

#[derive(Debug, derive_more::Display)]
pub enum AppError {
    #[display("bad request: {_0}")]
    BadRequest(String),
    #[display("validation failed")]
    Validation(Vec<FieldError>),
    /// Well-formed JSON with a wrong type in the named fields (400 with field errors).
    #[display("malformed fields")]
    Malformed(Vec<FieldError>),
    /// A well-formed request the service cannot process (422 without field errors).
    #[display("unprocessable: {_0}")]
    Unprocessable(String),
    #[display("unauthorized: {_0}")]
    Unauthorized(String),
    #[display("forbidden: {_0}")]
    Forbidden(String),
    /// Changing one's own password or email without the right `current_password` (403).
    #[display("reauthentication required: {_0}")]
    ReauthenticationRequired(String),
    #[display("not found: {_0}")]
    NotFound(String),
    /// `kind` names the problem type (`conflict`, `insufficient-funds`, ...).
    #[display("conflict: {detail}")]
    Conflict { kind: &'static str, detail: String, extensions: serde_json::Map<String, serde_json::Value> },
    #[display("precondition failed")]
    PreconditionFailed,
    #[display("payload too large")]
    PayloadTooLarge,
    #[display("unsupported media type")]
    UnsupportedMediaType,
    #[display("too many requests")]
    TooManyRequests { retry_after_secs: u64, detail: String },
    /// A write was still running when its caller stopped waiting: it may have applied.
    #[display("outcome unknown")]
    OutcomeUnknown,
    #[display("service unavailable: {detail}")]
    Unavailable { retry_after_secs: u64, detail: String },
    /// Something broke inside; the message is logged, never sent.
    #[display("internal error: {_0}")]
    Internal(String),
}

impl std::error::Error for AppError {}

impl AppError {
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict { kind: "conflict", detail: detail.into(), extensions: serde_json::Map::new() }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Unavailable { retry_after_secs: 1, detail: detail.into() }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// The one table of problem kinds: each variant's status and type (its URI is
    /// `urn:storefront:problem:<type>`); the title is the status's reason phrase.
    fn kind(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) | Self::Malformed(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation-error"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::ReauthenticationRequired(_) => (StatusCode::FORBIDDEN, "reauthentication-required"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::Conflict { kind, .. } => (StatusCode::CONFLICT, kind),
            Self::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "precondition-failed"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::OutcomeUnknown => (StatusCode::GATEWAY_TIMEOUT, "outcome-unknown"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// An internal failure caused by `error`: the log gets `context` and every `source()`
    /// of the chain, the client the generic 500 problem.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        Self::Internal(crate::error_chain::describe(context, error))
    }

    pub fn to_problem(&self) -> Problem {
        let (status, kind) = self.kind();
        let mut problem = Problem::for_status(status);
        problem.kind = kind;
        match self {
            Self::BadRequest(detail)
            | Self::Unprocessable(detail)
            | Self::Unauthorized(detail)
            | Self::Forbidden(detail)
            | Self::ReauthenticationRequired(detail)
            | Self::NotFound(detail) => problem.detail = detail.clone(),
            Self::Validation(errors) => {
                problem.detail = "The request has invalid fields.".into();
                problem.errors = errors.clone();
            }
            Self::Malformed(errors) => {
                problem.detail = "The request has fields of the wrong type.".into();
                problem.errors = errors.clone();
            }
            Self::Conflict { detail, extensions, .. } => {
                problem.detail = detail.clone();
                problem.extensions = extensions.clone();
            }
            Self::PreconditionFailed => problem.detail = "The resource has changed since it was read.".into(),
            Self::PayloadTooLarge => problem.detail = "The request body is larger than 64 KiB.".into(),
            Self::UnsupportedMediaType => problem.detail = "The request body must be application/json.".into(),
            Self::TooManyRequests { detail, .. } | Self::Unavailable { detail, .. } => problem.detail = detail.clone(),
            Self::Internal(_) => problem.detail = "The server could not complete the request.".into(),
            Self::OutcomeUnknown => {
                problem.detail = "The database did not confirm the change in time; it may or may not have been \
                                  applied. Check before retrying, or retry with the same Idempotency-Key."
                    .into();
            }
        }
        problem
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.kind().0
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %cause, "request failed with an internal error");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::TooManyRequests { retry_after_secs, .. } | Self::Unavailable { retry_after_secs, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            _ => {}
        }
        let mut response = response.finish();
        response.extensions_mut().insert(self.to_problem());
        response
    }
}

/// Problem details as sent (RFC 9457). `instance` and `request_id` are filled in by the
/// problem middleware, which knows the request.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub instance: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    kind: &'static str,
}

impl Problem {
    /// A problem for a status code alone, used for the framework's own error responses.
    pub fn for_status(status: StatusCode) -> Self {
        let title = status.canonical_reason().unwrap_or("Error").to_owned();
        let (kind, detail) = match status {
            StatusCode::NOT_FOUND => ("not-found", "No resource exists at this path."),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method-not-allowed", "This method is not allowed here; see the Allow header.")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "The request body is larger than 64 KiB."),
            s if s.is_server_error() => ("internal", "The server could not complete the request."),
            _ => ("bad-request", "The request could not be processed."),
        };
        Self {
            type_uri: String::new(),
            title,
            status: status.as_u16(),
            detail: detail.to_owned(),
            instance: String::new(),
            request_id: String::new(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            kind,
        }
    }

    pub fn finish(mut self, instance: &str, request_id: &str) -> Self {
        self.type_uri = format!("urn:storefront:problem:{}", self.kind);
        instance.clone_into(&mut self.instance);
        request_id.clone_into(&mut self.request_id);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, derive_more::Display, derive_more::Error)]
    #[display("connection reset")]
    struct Cause;

    #[derive(Debug, derive_more::Display, derive_more::Error)]
    #[display("query failed")]
    struct Failure {
        source: Cause,
    }

    #[test]
    fn an_internal_error_keeps_its_whole_cause_for_the_log_but_not_for_the_client() {
        let error = AppError::internal("loading orders", &Failure { source: Cause });
        assert_eq!(error.to_string(), "internal error: loading orders: query failed: connection reset");
        assert_eq!(error.to_problem().detail, "The server could not complete the request.");
    }
}
