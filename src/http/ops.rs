//! Operations endpoints (no /api/v1 prefix, never rate limited): liveness, readiness,
//! metrics. (The OpenAPI document serves itself: `openapi`.)

use std::time::Duration;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::{
    actors::health::{self, GetReadiness, ReadinessReport},
    http::auth_header::bearer_token,
    http::error::AppError,
    state::AppState,
};

const HEALTH_JSON: &str = "application/health+json";
/// /readyz must answer quickly even when the Health actor is wedged.
const READINESS_TIMEOUT: Duration = Duration::from_millis(500);

/// The process is up and can serve; the database is not consulted.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type(HEALTH_JSON).json(json!({"status": "pass"}))
}

/// Whether this replica should receive traffic: database reachable, DbExecutor pool
/// complete, neither it nor the Health actor backing off, not shutting down. Answered from
/// the Health actor's memory.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", content_type = "application/health+json"),
    (status = 503, description = "Not ready", content_type = "application/health+json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let health_down = state.actors.restarts().find(health::ACTOR).filter(|restarts| restarts.is_down());
    let report = if let Some(restarts) = health_down {
        let output = format!("restarting after repeated crashes, in {} s", restarts.retry_after_secs());
        ReadinessReport { ready: false, checks: json!({"health:actor": [{"status": "fail", "output": output}]}) }
    } else {
        match state.health.send(GetReadiness).timeout(READINESS_TIMEOUT).await {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "health actor did not answer");
                ReadinessReport {
                    ready: false,
                    checks: json!({"health:actor": [{"status": "fail", "output": "no answer"}]}),
                }
            }
        }
    };
    let mut response = if report.ready { HttpResponse::Ok() } else { HttpResponse::ServiceUnavailable() };
    response
        .content_type(HEALTH_JSON)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"status": if report.ready { "pass" } else { "fail" }, "checks": report.checks}))
}

/// Prometheus text exposition; behind `METRICS_TOKEN` when one is set.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain"),
    (status = 401, description = "METRICS_TOKEN is set and the bearer token does not match"),
), security((), ("metrics_token" = [])))]
pub async fn metrics(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, AppError> {
    if let Some(expected) = &state.config.ops.metrics_token {
        if !expected.matches(bearer_token(&request).unwrap_or_default()) {
            return Err(AppError::Unauthorized("A valid metrics token is required.".into()));
        }
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render()))
}
