//! One access line per request: method, route pattern, status, duration, request id, and
//! the caller's user id when a valid token named one. 5xx are errors, everything else info.
//! Never the raw target: the query string can hold secrets (WebSocket clients send
//! `?access_token=`), so only the matched route pattern is written.

use std::time::Duration;

use actix_web::http::Method;
use uuid::Uuid;

pub struct Access<'a> {
    pub method: &'a Method,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub request_id: &'a str,
    pub user_id: Option<Uuid>,
}

/// Written inside the request's span, so span-aware formats carry its fields too.
pub fn write(access: Access<'_>) {
    let Access { method, route, status, duration, request_id, user_id } = access;
    let duration_ms = (duration.as_secs_f64() * 100_000.0).round() / 100.0;
    let user_id = user_id.map(tracing::field::display);
    if status >= 500 {
        tracing::error!(target: "storefront::access", %method, %route, status, duration_ms, %request_id, user_id, "request");
    } else {
        tracing::info!(target: "storefront::access", %method, %route, status, duration_ms, %request_id, user_id, "request");
    }
}
