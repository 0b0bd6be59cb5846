//! The RateLimiter actor owns every GCRA bucket: one TAT per (policy, client key), in an
//! LRU with a hard cap so a flood of distinct clients cannot grow memory without bound,
//! and swept of idle (full) buckets on an interval.

use std::{num::NonZeroUsize, sync::Arc, time::Duration, time::Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult, Supervised};
use lru::LruCache;

use super::{
    chaos::crashed,
    report::{ActorReport, GetActorReport},
    supervision::{guarded, Guarded, PanicPayload, RestartReporter},
    Crash,
};
use crate::{
    domain::rate_limit::{check, Decision, Quota},
    error::AppError,
    metrics::Metrics,
};

const ACTOR: &str = "rate_limiter";
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Default,
    Auth,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Auth => "auth",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub default: Quota,
    pub auth: Quota,
}

impl Quotas {
    pub fn of(&self, policy: Policy) -> Quota {
        match policy {
            Policy::Default => self.default,
            Policy::Auth => self.auth,
        }
    }
}

pub struct RateLimiter {
    quotas: Quotas,
    buckets: LruCache<(Policy, String), u64>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    reporter: RestartReporter,
}

impl RateLimiter {
    pub fn new(quotas: Quotas, max_keys: NonZeroUsize, metrics: Arc<Metrics>, reporter: RestartReporter) -> Self {
        Self { quotas, buckets: LruCache::new(max_keys), epoch: Instant::now(), metrics, reporter }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn decide(&mut self, policy: Policy, key: String) -> Decision {
        let now = self.now_ns();
        let bucket = (policy, key);
        let decision = check(self.quotas.of(policy), self.buckets.get(&bucket).copied(), now);
        if decision.allowed {
            // `put` evicts the least recently used bucket once the cap is reached.
            self.buckets.put(bucket, decision.tat_ns);
        } else {
            self.metrics.rate_limited.with_label_values(&[policy.name()]).inc();
        }
        self.metrics.rate_limit_keys.set(i64::try_from(self.buckets.len()).unwrap_or(i64::MAX));
        decision
    }

    /// A bucket whose TAT has passed is full: forgetting it changes nothing.
    fn sweep(&mut self) {
        let now = self.now_ns();
        let idle: Vec<(Policy, String)> =
            self.buckets.iter().filter(|(_, tat)| **tat <= now).map(|(bucket, _)| bucket.clone()).collect();
        for bucket in idle {
            self.buckets.pop(&bucket);
        }
        self.metrics.rate_limit_keys.set(i64::try_from(self.buckets.len()).unwrap_or(i64::MAX));
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        guarded(self, ctx, |_, ctx| {
            ctx.set_mailbox_capacity(1024);
            ctx.run_interval(SWEEP_INTERVAL, |act, ctx| {
                guarded(act, ctx, |act, _| act.sweep());
            });
        });
    }
}

impl Guarded for RateLimiter {
    fn on_panic(&mut self, payload: &PanicPayload) {
        self.reporter.report(ACTOR, payload);
    }
}

impl Supervised for RateLimiter {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // A panic may have left the buckets half-updated; start clean (clients get a fresh burst).
        guarded(self, ctx, |act, _| act.buckets.clear());
    }
}

#[derive(Message)]
#[rtype(result = "Option<Decision>")]
pub struct Check {
    pub policy: Policy,
    pub key: String,
}

impl Handler<Check> for RateLimiter {
    type Result = MessageResult<Check>;
    fn handle(&mut self, msg: Check, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(guarded(self, ctx, |act, _| act.decide(msg.policy, msg.key)))
    }
}

impl Handler<Crash> for RateLimiter {
    type Result = Result<(), AppError>;
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, |_, _| msg.detonate()).ok_or_else(|| crashed(ACTOR))
    }
}

impl Handler<GetActorReport> for RateLimiter {
    type Result = MessageResult<GetActorReport>;
    fn handle(&mut self, _msg: GetActorReport, ctx: &mut Context<Self>) -> Self::Result {
        let report = guarded(self, ctx, |act, _| {
            let limited = |policy: Policy| act.metrics.rate_limited.with_label_values(&[policy.name()]).get();
            ActorReport::running(
                ACTOR,
                serde_json::json!({
                    "keys_tracked": act.buckets.len(), "max_keys": act.buckets.cap().get(),
                    "limited": {"default": limited(Policy::Default), "auth": limited(Policy::Auth)},
                }),
            )
        });
        MessageResult(report.unwrap_or_else(|| ActorReport::unresponsive(ACTOR, "panicked while reporting")))
    }
}
