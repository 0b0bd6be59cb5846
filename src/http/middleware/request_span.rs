//! The root tracing span of a request, carrying our request id (tracing-actix-web's own
//! id type is a UUID and cannot hold a client-supplied id). Its fields are those of
//! tracing-actix-web's root span, which records the outcome into it at the end.

use actix_web::{body::MessageBody, dev::ServiceRequest, dev::ServiceResponse, Error};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

/// Field values are only computed when the span is enabled (the `info` level).
pub fn start(request: &ServiceRequest, request_id: &str) -> Span {
    tracing::info_span!(
        "http_request",
        http.method = %request.method(),
        http.route = %request.match_pattern().unwrap_or_default(),
        http.target = %request.path(),
        http.status_code = tracing::field::Empty,
        request_id = %request_id,
        otel.status_code = tracing::field::Empty,
        exception.message = tracing::field::Empty,
        exception.details = tracing::field::Empty,
    )
}

pub fn end<B: MessageBody>(span: &Span, outcome: &Result<ServiceResponse<B>, Error>) {
    if !span.is_disabled() {
        DefaultRootSpanBuilder::on_request_end(span.clone(), outcome);
    }
}
