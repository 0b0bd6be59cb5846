//! How the framework's extractors fail: malformed JSON and wrong types are 400, unknown
//! or missing fields are 422 with field errors, oversized bodies 413, wrong media type 415.

use actix_web::{
    error::{JsonPayloadError, PathError, QueryPayloadError},
    web, HttpRequest,
};

use crate::error::{AppError, FieldError};

pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(BODY_LIMIT_BYTES).error_handler(|error, _req| json_error(error).into())
}

pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::default().limit(BODY_LIMIT_BYTES)
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, _req: &HttpRequest| {
        let PathError::Deserialize(cause) = error else {
            return AppError::BadRequest("The path is not valid.".into()).into();
        };
        AppError::NotFound(format!("No resource exists at this path ({cause}).")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _req: &HttpRequest| {
        let detail = match error {
            QueryPayloadError::Deserialize(cause) => {
                format!("The query string is not valid: {cause}.")
            }
            _ => "The query string is not valid.".to_owned(),
        };
        AppError::BadRequest(detail).into()
    })
}

fn json_error(error: JsonPayloadError) -> AppError {
    match error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => AppError::PayloadTooLarge,
        JsonPayloadError::ContentType => AppError::UnsupportedMediaType,
        JsonPayloadError::Deserialize(cause) => classify_json(&cause),
        _ => AppError::BadRequest("The request body could not be read.".into()),
    }
}

fn classify_json(cause: &serde_json::Error) -> AppError {
    let message = cause.to_string();
    if cause.classify() == serde_json::error::Category::Data {
        if let Some(field) = quoted_name(&message, "unknown field `") {
            return AppError::Validation(vec![FieldError::new(field, "is not a known field")]);
        }
        if let Some(field) = quoted_name(&message, "missing field `") {
            return AppError::Validation(vec![FieldError::new(field, "is required")]);
        }
    }
    AppError::BadRequest(format!("The request body is not valid JSON for this endpoint: {message}."))
}

fn quoted_name<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}
