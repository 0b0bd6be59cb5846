//! Counts and times every request by method, route pattern and status. The route is the
//! matched pattern (`/api/v1/products/{id}`), never the raw path, so label sets stay small.

use std::{sync::Arc, time::Instant};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web, Error,
};

use crate::metrics::Metrics;

pub async fn record_http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Arc<Metrics>>>().map(|data| Arc::clone(data.get_ref()));
    // Only standard methods become label values: a client must not mint time series.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let response = next.call(req).await?;
    if let Some(metrics) = metrics {
        let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
        let status = response.status().as_u16().to_string();
        metrics.http_requests.with_label_values(&[method, route.as_str(), status.as_str()]).inc();
        metrics.http_duration.with_label_values(&[method, route.as_str()]).observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}
