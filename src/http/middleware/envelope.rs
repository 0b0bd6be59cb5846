//! The layer every request enters first and every response leaves last. It runs, in this
//! order, what were eight nested layers, each of which boxed the future inside it and
//! re-wrapped the response: `HEAD` routed as `GET`, the request id and the request's span
//! on the way in; problem rendering, security headers, metrics, the access line, the span's
//! outcome, the `X-Request-Id` header and `Connection: close` while draining on the way
//! out. Each step lives in its own module; this one orders them and reads the clock once
//! at each end.

use std::{sync::Arc, time::Instant};

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web, Error, HttpMessage,
};
use tracing::Instrument;

use super::{
    access_log::{self, Access},
    drain, head,
    http_metrics::{self, RequestMetrics},
    problem,
    rate_limit::VerifiedToken,
    request_id::{self, RequestIds, REQUEST_ID_HEADER},
    request_span, security_headers,
};

/// What a request without a matched route is labelled with.
const UNMATCHED: &str = "unmatched";

pub async fn envelope(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    head::route_as_get(&mut req);
    let method = req.method().clone();
    let method_label = http_metrics::method_label(&method);
    let closes_after = drain::closes_after(&req);
    let (request_id, id_header) = request_id::assign(&req, req.app_data::<RequestIds>());
    let span = request_span::start(&req, &request_id);
    let metrics = req.app_data::<web::Data<RequestMetrics>>().cloned();
    // Routing needs the request unshared, so keep a (cheap, shared) copy of what a problem needs.
    let uri = req.uri().clone();

    let outcome = crate::request_context::scope(Arc::clone(&request_id), next.call(req)).instrument(span.clone()).await;
    let duration = started.elapsed();

    let response = match outcome {
        Ok(response) => problem::render(response.map_into_boxed_body(), uri.path(), &request_id),
        // Handlers, extractors and CORS answer errors as responses; an inner layer that
        // fails outright leaves no request to answer with.
        Err(error) => {
            let failure = problem::render_failure(&error, uri.path(), &request_id);
            let status = failure.as_response_error().status_code();
            if let Some(metrics) = &metrics {
                metrics.record(method_label, UNMATCHED, status, duration);
            }
            let access = Access {
                method: &method,
                route: UNMATCHED,
                status: status.as_u16(),
                duration,
                request_id: &request_id,
                user_id: None,
            };
            span.in_scope(|| access_log::write(access));
            let outcome = Err(failure);
            request_span::end::<BoxBody>(&span, &outcome);
            return outcome;
        }
    };
    let mut response = response;
    security_headers::add(response.headers_mut());
    let status = response.status();
    {
        let request = response.request();
        let route = request.match_pattern();
        let route = route.as_deref().unwrap_or(UNMATCHED);
        if let Some(metrics) = &metrics {
            metrics.record(method_label, route, status, duration);
        }
        let user_id = request.extensions().get::<VerifiedToken>().map(|token| token.0.user_id);
        let access =
            Access { method: &method, route, status: status.as_u16(), duration, request_id: &request_id, user_id };
        span.in_scope(|| access_log::write(access));
    }
    let outcome = Ok(response);
    request_span::end(&span, &outcome);
    let mut response = outcome?;
    if let Some(header) = id_header {
        response.headers_mut().insert(REQUEST_ID_HEADER.clone(), header);
    }
    if closes_after {
        drain::close_connection(&mut response);
    }
    Ok(response)
}
