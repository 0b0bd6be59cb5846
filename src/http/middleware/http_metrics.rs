//! Counts and times every request by method, route pattern and status. The route is the
//! matched pattern (`/api/v1/products/{id}`), never the raw path, so label sets stay small.

use std::time::Duration;

use actix_web::http::{Method, StatusCode};

use crate::metrics::Metrics;

/// Only standard methods become label values: a client must not mint time series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pub fn record(metrics: &Metrics, method: &'static str, route: &str, status: StatusCode, duration: Duration) {
    metrics.http_requests.with_label_values(&[method, route, status.as_str()]).inc();
    metrics.http_duration.with_label_values(&[method, route]).observe(duration.as_secs_f64());
}
