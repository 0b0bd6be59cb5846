//! One access line per request: method, route pattern, status, duration, request id, and
//! the caller's user id when a valid token named one. 5xx are errors, everything else info.
//! Never the raw target: the query string can hold secrets (WebSocket clients send
//! `?access_token=`), so only the matched route pattern is written.

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    Error, HttpMessage,
};

use super::{rate_limit::VerifiedToken, request_id::RequestId};

pub async fn log_access(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let outcome = next.call(req).await;
    let duration_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
    let (status, route, request_id, user_id) = match &outcome {
        Ok(response) => {
            let request = response.request();
            let extensions = request.extensions();
            (
                response.status(),
                request.match_pattern().unwrap_or_else(|| "unmatched".to_owned()),
                extensions.get::<RequestId>().map(|id| id.0.clone()),
                extensions.get::<VerifiedToken>().map(|token| token.0.user_id.to_string()),
            )
        }
        // An inner layer failed outright: no request is left to read, the span still has the id.
        Err(error) => (error.as_response_error().status_code(), "unmatched".to_owned(), None, None),
    };
    let request_id = request_id.as_deref().unwrap_or_default();
    let user_id = user_id.map(tracing::field::display);
    let status = status.as_u16();
    if status >= 500 {
        tracing::error!(target: "storefront::access", %method, %route, status, duration_ms, %request_id, user_id, "request");
    } else {
        tracing::info!(target: "storefront::access", %method, %route, status, duration_ms, %request_id, user_id, "request");
    }
    outcome
}
