//! Domain rules: plain types and functions with no actix or diesel in them.

pub mod cache_key;
pub mod catalog;
pub mod clock;
pub mod live;
pub mod money;
pub mod paging;
pub mod rate_lease;
pub mod rate_limit;
pub mod redact;
pub mod refusal;
pub mod restart_intensity;
pub mod shop;
pub mod text;
pub mod user;

use serde::Serialize;

/// What is wrong with one field of a request: the `errors` of a validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}
