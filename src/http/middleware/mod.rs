//! The middleware stack, outermost first: request id → tracing span → metrics →
//! security headers → problem rendering → CORS → (rate limit) → handlers.

pub mod http_metrics;
pub mod problem;
pub mod request_id;
pub mod request_span;
pub mod security_headers;
