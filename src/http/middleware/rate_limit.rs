//! Asks this worker's RateLimiter shard about every `/api/v1` request: `auth` policy per client
//! address for `/api/v1/auth/*`, `default` per user (valid token) or address elsewhere.
//! Answers carry the IETF `RateLimit-Policy` and `RateLimit` fields; refusals are 429 with
//! `Retry-After`. If the limiter does not answer in time the request passes (fail open).

use std::{net::IpAddr, time::Duration};

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
    middleware::Next,
    web, Error, HttpMessage,
};

use crate::{
    actors::rate_limiter::Policy,
    auth::tokens::VerifiedClaims,
    domain::rate_limit::{whole_seconds_up, Decision, FailOpenBudget, Quota},
    error::AppError,
    http::auth_header::bearer_token,
    state::AppState,
};

/// The replica's fail-open allowance, on the process's monotonic clock.
#[derive(Debug)]
pub struct FailOpenGate {
    budget: FailOpenBudget,
    epoch: std::time::Instant,
}

impl Default for FailOpenGate {
    fn default() -> Self {
        Self { budget: FailOpenBudget::default(), epoch: std::time::Instant::now() }
    }
}

impl FailOpenGate {
    pub fn try_admit(&self) -> bool {
        self.budget.try_admit(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A bearer token whose signature and claims were verified for this request.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedToken(pub VerifiedClaims);

const LIMITER_TIMEOUT: Duration = Duration::from_millis(100);
static POLICY_HEADER: HeaderName = HeaderName::from_static("ratelimit-policy");
static STATE_HEADER: HeaderName = HeaderName::from_static("ratelimit");

pub async fn limit_rate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let path = req.path();
    let policy = if path.starts_with("/api/v1/auth/") {
        Policy::Auth
    } else if path.starts_with("/api/v1/") {
        Policy::Default
    } else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let key = client_key(&req, &state, policy);
    let decision = match state.rate_limiter.check(policy, key, LIMITER_TIMEOUT).await {
        Ok(Some(decision)) => decision,
        outcome => {
            // Fail open, but only within a small budget shared by all clients.
            let budget = req.app_data::<web::Data<FailOpenGate>>().cloned();
            if !budget.is_some_and(|gate| gate.try_admit()) {
                tracing::warn!(failed = ?outcome.err(), "rate limiter did not answer and the fail-open budget is spent");
                return Ok(
                    req.error_response(AppError::unavailable("The rate limiter is unavailable; try again shortly."))
                );
            }
            state.metrics.rate_limiter_fail_open.inc();
            tracing::warn!(failed = ?outcome.err(), "rate limiter did not answer; letting the request through");
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
    };
    let quota = state.config.rate_limits.of(policy);
    if !decision.allowed {
        let error = AppError::TooManyRequests {
            retry_after_secs: whole_seconds_up(decision.retry_after).max(1),
            detail: format!("Rate limit \"{}\" exceeded; retry after the time in Retry-After.", policy.name()),
        };
        let mut response = req.error_response(error);
        describe(response.headers_mut(), policy, quota, &decision);
        return Ok(response);
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    describe(response.headers_mut(), policy, quota, &decision);
    Ok(response)
}

fn describe(headers: &mut HeaderMap, policy: Policy, quota: Quota, decision: &Decision) {
    let name = policy.name();
    let window = whole_seconds_up(quota.window()).max(1);
    let reset = whole_seconds_up(decision.reset_after);
    let fields = [
        (&POLICY_HEADER, format!("\"{name}\";q={};w={window}", quota.burst)),
        (&STATE_HEADER, format!("\"{name}\";r={};t={reset}", decision.remaining)),
    ];
    for (header, value) in fields {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header.clone(), value);
        }
    }
    if !decision.allowed && !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds_up(decision.retry_after).max(1)));
    }
}

/// The user behind a valid token (default policy only), else the client address.
fn client_key(req: &ServiceRequest, state: &AppState, policy: Policy) -> String {
    if policy == Policy::Default {
        if let Some(claims) = bearer_token(req.request()).and_then(|token| state.tokens.verify_claims(token).ok()) {
            // The authentication extractor uses this instead of checking the signature again.
            req.extensions_mut().insert(VerifiedToken(claims));
            return format!("user:{}", claims.user_id);
        }
    }
    match client_ip(req.request(), &state.config.trusted_proxies) {
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".to_owned(),
    }
}

/// The peer address, or, when the peer is a trusted proxy, the nearest address in
/// `X-Forwarded-For` that is not one of ours. An untrusted peer cannot pick its key.
pub fn client_ip(req: &actix_web::HttpRequest, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    Some(forwarded.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer))
}
