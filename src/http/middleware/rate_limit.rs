//! Asks this worker's RateLimiter shard about every `/api/v1` request: `auth` policy per client
//! address for `/api/v1/auth/*`, `default` per user (valid token) or address elsewhere.
//! Answers carry the IETF `RateLimit-Policy` and `RateLimit` fields, taken from the decision
//! itself (the remaining count is what the deciding ledger has left for the client);
//! refusals are 429 with `Retry-After`. If the limiter does not answer in time the request
//! passes within a small replica-wide budget (fail open).

use std::{fmt::Write, net::IpAddr};

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
    middleware::Next,
    web::{self, Bytes},
    Error, HttpMessage,
};

use crate::{
    auth::tokens::VerifiedClaims,
    domain::rate_limit::{whole_seconds_up, ClientKey, Decision, FailOpenBudget, Policy, Quotas},
    http::auth_header::bearer_token,
    http::error::AppError,
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

static POLICY_HEADER: HeaderName = HeaderName::from_static("ratelimit-policy");
static STATE_HEADER: HeaderName = HeaderName::from_static("ratelimit");

/// Each policy's `RateLimit-Policy` value, which only the configuration decides: written
/// once per HTTP worker (its own copy, so sharing it costs no cross-core reference count).
#[derive(Debug)]
pub struct PolicyFields {
    default: Option<HeaderValue>,
    auth: Option<HeaderValue>,
}

impl PolicyFields {
    pub fn new(quotas: &Quotas) -> Self {
        let field = |policy: Policy| {
            let quota = quotas.of(policy);
            let window = whole_seconds_up(quota.window()).max(1);
            HeaderValue::from_str(&format!("\"{}\";q={};w={window}", policy.name(), quota.burst)).ok()
        };
        Self { default: field(Policy::Default), auth: field(Policy::Auth) }
    }

    fn of(&self, policy: Policy) -> Option<&HeaderValue> {
        match policy {
            Policy::Default => self.default.as_ref(),
            Policy::Auth => self.auth.as_ref(),
        }
    }
}

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
    let timeout = state.rate_limiter.decision_timeout();
    let decision = match state.rate_limiter.check(policy, key, timeout).await {
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
    let fields = req.app_data::<web::Data<PolicyFields>>().cloned();
    let fields = fields.as_ref().map(|fields| fields.get_ref());
    if !decision.allowed {
        state.metrics.rate_limited.with_label_values(&[policy.name()]).inc();
        let error = AppError::TooManyRequests {
            retry_after_secs: whole_seconds_up(decision.retry_after).max(1),
            detail: format!("Rate limit \"{}\" exceeded; retry after the time in Retry-After.", policy.name()),
        };
        let mut response = req.error_response(error);
        describe(response.headers_mut(), policy, fields, &decision);
        return Ok(response);
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    describe(response.headers_mut(), policy, fields, &decision);
    Ok(response)
}

fn describe(headers: &mut HeaderMap, policy: Policy, fields: Option<&PolicyFields>, decision: &Decision) {
    if let Some(value) = fields.and_then(|fields| fields.of(policy)) {
        headers.insert(POLICY_HEADER.clone(), value.clone());
    }
    // Written straight into the bytes the header keeps: one allocation, no copy.
    let mut state = String::with_capacity(32);
    let reset = whole_seconds_up(decision.reset_after);
    if write!(state, "\"{}\";r={};t={reset}", policy.name(), decision.remaining).is_ok() {
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
            headers.insert(STATE_HEADER.clone(), value);
        }
    }
    if !decision.allowed && !headers.contains_key(RETRY_AFTER) {
        headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds_up(decision.retry_after).max(1)));
    }
}

/// The user behind a valid token (default policy only), else the client address.
fn client_key(req: &ServiceRequest, state: &AppState, policy: Policy) -> ClientKey {
    if policy == Policy::Default {
        if let Some(claims) = bearer_token(req.request()).and_then(|token| state.tokens.verify_claims(token).ok()) {
            // The authentication extractor uses this instead of checking the signature again.
            req.extensions_mut().insert(VerifiedToken(claims));
            return ClientKey::User(claims.user_id);
        }
    }
    client_ip(req.request(), &state.config.server.trusted_proxies).map_or(ClientKey::UnknownIp, ClientKey::Ip)
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
