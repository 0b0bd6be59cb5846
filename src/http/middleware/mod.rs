//! The middleware stack, outermost first: the envelope (HEAD as GET, request id, tracing
//! span, and on the way out problem rendering, security headers, metrics, access log,
//! drain) → CORS → rate limit → handlers. The envelope's steps each have a module here.

pub mod access_log;
pub mod drain;
pub mod envelope;
pub mod head;
pub mod http_metrics;
pub mod problem;
pub mod rate_limit;
pub mod request_id;
pub mod request_span;
pub mod security_headers;

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};

/// Whether a response's media type is JSON of any flavour (`application/*json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().ends_with("json"))
}
