//! Admin-only operations under `/api/v1/ops`: every actor's life (`actors`), the restart
//! ledger (`restarts`), and a JSON summary of the service's own metrics (`metrics`), which
//! the ops dashboard charts without needing `METRICS_TOKEN` or a Prometheus.

use std::{collections::HashMap, time::Duration};

use actix_web::{http::header, web, HttpResponse};
use chrono::{DateTime, Utc};
use prometheus::proto::MetricFamily;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    actors::{
        health::{GetRestartLedger, RestartLedger},
        report::ActorReport,
    },
    domain::user::Permission,
    http::auth_user::AuthUser,
    http::error::AppError,
    state::AppState,
};

/// The ledger is in the Health actor's memory; it answers in microseconds or not at all.
const LEDGER_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorsResponse {
    pub generated_at: DateTime<Utc>,
    pub actors: Vec<ActorReport>,
    /// Whether `POST /ops/chaos` exists (CHAOS_TOKEN is set); the token itself is never exposed.
    pub chaos_enabled: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RestartEntry {
    pub actor: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RestartsResponse {
    /// The last 100 restarts, newest first.
    pub restarts: Vec<RestartEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LatencyBucket {
    /// Upper bound in seconds.
    pub le: f64,
    /// Requests at most this slow since start-up.
    pub count: u64,
}

/// Counters since start-up (the page charts their differences between reads), for
/// application traffic: probes, metrics and the ops routes themselves are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsSummary {
    pub at: DateTime<Utc>,
    pub requests_total: u64,
    /// Responses with a 5xx status.
    pub errors_total: u64,
    pub rate_limited_total: u64,
    pub cache_hits_total: u64,
    /// Hits, misses and coalesced lookups together.
    pub cache_lookups_total: u64,
    /// Open WebSocket connections; null when this build serves no WebSockets.
    pub ws_connections: Option<f64>,
    /// 0 closed, 1 open, 2 half-open.
    pub db_breaker_state: f64,
    pub db_in_flight: f64,
    pub latency_buckets: Vec<LatencyBucket>,
    pub latency_count: u64,
}

async fn ledger(state: &AppState) -> Option<RestartLedger> {
    state.health.send(GetRestartLedger).timeout(LEDGER_TIMEOUT).await.ok().flatten()
}

fn json_no_store(body: &impl Serialize) -> HttpResponse {
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body)
}

/// Every supervised actor: instances, queue, restarts and its own state. An actor that
/// does not answer within 200 ms is shown with `alive: 0` instead of stalling the answer.
#[utoipa::path(get, path = "/api/v1/ops/actors", tag = "operations", responses(
    (status = 200, description = "One row per actor kind", body = ActorsResponse),
    (status = 401, description = "No valid access token", content_type = "application/problem+json"),
    (status = 403, description = "The caller is not an admin", content_type = "application/problem+json"),
), security(("bearer" = [])))]
pub async fn actors(state: web::Data<AppState>, caller: AuthUser) -> Result<HttpResponse, AppError> {
    caller.require(Permission::SeeOpsTopic)?;
    let by_actor = ledger(&state).await.map(|ledger| ledger.by_actor).unwrap_or_default();
    let actors = state.actors.reports(&state.metrics, &by_actor).await;
    Ok(json_no_store(&ActorsResponse {
        generated_at: Utc::now(),
        actors,
        chaos_enabled: state.config.ops.chaos_token.is_some(),
    }))
}

/// The restart ledger: the last 100 actor restarts, newest first.
#[utoipa::path(get, path = "/api/v1/ops/restarts", tag = "operations", responses(
    (status = 200, description = "Newest first", body = RestartsResponse),
    (status = 401, description = "No valid access token", content_type = "application/problem+json"),
    (status = 403, description = "The caller is not an admin", content_type = "application/problem+json"),
    (status = 503, description = "The Health actor (which keeps the ledger) did not answer", content_type = "application/problem+json"),
), security(("bearer" = [])))]
pub async fn restarts(state: web::Data<AppState>, caller: AuthUser) -> Result<HttpResponse, AppError> {
    caller.require(Permission::SeeOpsTopic)?;
    let ledger = ledger(&state).await.ok_or_else(|| AppError::unavailable("The restart ledger did not answer."))?;
    let restarts = ledger
        .newest_first
        .into_iter()
        .map(|restart| RestartEntry { actor: restart.actor.to_owned(), at: restart.at, reason: restart.reason })
        .collect();
    Ok(json_no_store(&RestartsResponse { restarts }))
}

/// The service's own metrics, summed for charts: request, error and rate-limit counts,
/// cache hits, WebSocket connections, breaker state, and the latency histogram.
#[utoipa::path(get, path = "/api/v1/ops/metrics", tag = "operations", responses(
    (status = 200, description = "Counters since start-up", body = MetricsSummary),
    (status = 401, description = "No valid access token", content_type = "application/problem+json"),
    (status = 403, description = "The caller is not an admin", content_type = "application/problem+json"),
), security(("bearer" = [])))]
pub async fn metrics_summary(state: web::Data<AppState>, caller: AuthUser) -> Result<HttpResponse, AppError> {
    caller.require(Permission::SeeOpsTopic)?;
    Ok(json_no_store(&summarise(&state.metrics.gather())))
}

/// Routes that are the operator's, not the application's traffic.
fn is_operations_route(route: &str) -> bool {
    matches!(route, "/livez" | "/readyz" | "/metrics" | "/openapi.json")
        || route.starts_with("/ops")
        || route.starts_with("/api/v1/ops")
}

fn summarise(families: &[MetricFamily]) -> MetricsSummary {
    let by_name: HashMap<&str, &MetricFamily> = families.iter().map(|family| (family.name(), family)).collect();
    let label = |metric: &prometheus::proto::Metric, name: &str| {
        metric.get_label().iter().find(|pair| pair.name() == name).map(|pair| pair.value().to_owned())
    };
    let metrics_of = |name: &str| by_name.get(name).map(|family| family.get_metric()).unwrap_or_default();
    let application =
        |metric: &&prometheus::proto::Metric| label(metric, "route").is_none_or(|route| !is_operations_route(&route));
    let count = |value: f64| value.max(0.0) as u64;

    let mut requests_total = 0;
    let mut errors_total = 0;
    for metric in metrics_of("storefront_http_requests_total").iter().filter(application) {
        let value = count(metric.get_counter().get_value());
        requests_total += value;
        if label(metric, "status").is_some_and(|status| status.starts_with('5')) {
            errors_total += value;
        }
    }
    let sum_counter = |name: &str| metrics_of(name).iter().map(|m| count(m.get_counter().get_value())).sum::<u64>();
    let gauge = |name: &str| {
        by_name.get(name).map(|family| family.get_metric().iter().map(|m| m.get_gauge().get_value()).sum())
    };

    let (mut cache_hits_total, mut cache_lookups_total) = (0, 0);
    for metric in metrics_of("storefront_cache_requests_total") {
        let value = count(metric.get_counter().get_value());
        cache_lookups_total += value;
        if label(metric, "result").as_deref() == Some("hit") {
            cache_hits_total += value;
        }
    }

    let mut buckets: Vec<LatencyBucket> = Vec::new();
    let mut latency_count = 0;
    for metric in metrics_of("storefront_http_request_duration_seconds").iter().filter(application) {
        let histogram = metric.get_histogram();
        latency_count += histogram.get_sample_count();
        for (index, bucket) in histogram.get_bucket().iter().enumerate() {
            match buckets.get_mut(index) {
                Some(sum) => sum.count += bucket.cumulative_count(),
                None => buckets.push(LatencyBucket { le: bucket.upper_bound(), count: bucket.cumulative_count() }),
            }
        }
    }

    MetricsSummary {
        at: Utc::now(),
        requests_total,
        errors_total,
        rate_limited_total: sum_counter("storefront_rate_limited_total"),
        cache_hits_total,
        cache_lookups_total,
        ws_connections: gauge("storefront_ws_connections"),
        db_breaker_state: gauge("storefront_db_breaker_state").unwrap_or(0.0),
        db_in_flight: gauge("storefront_db_in_flight").unwrap_or(0.0),
        latency_buckets: buckets,
        latency_count,
    }
}
