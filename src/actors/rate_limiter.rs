//! The RateLimiter actor owns GCRA buckets: one TAT per (policy, client key), in an LRU
//! with a hard cap so a flood of distinct clients cannot grow memory without bound, and
//! swept of idle (full) buckets on an interval.
//!
//! One RateLimiter runs on each HTTP worker's arbiter (a shard), so a request's check is a
//! same-thread send. Each shard holds the full quota for the clients it sees. The bound
//! this gives for the `default` policy, per client, over any interval of length t on one
//! replica (the `auth` policy is decided by one shard and stays exact):
//!
//! ```text
//! admitted <= W * (burst + rate * t)      (W = HTTP workers)
//! ```
//!
//! A client on one keep-alive connection stays on one worker and gets exactly
//! `burst + rate * t`; only a client that spreads its connections over the workers can
//! reach W times that. We chose this over splitting the quota by W, which would refuse a
//! well-behaved single-connection client at 1/W of its stated quota. Add to it what was
//! already true: after a shard panics, the one client being decided gets a fresh burst,
//! and while a shard does not answer, the replica-wide fail-open budget applies.

use std::{net::IpAddr, num::NonZeroUsize, sync::Arc, time::Duration, time::Instant};

use actix::{
    Actor, Addr, AsyncContext, Context, Handler, MailboxError, Message, MessageResult, Supervised, Supervisor,
};
use lru::LruCache;
use uuid::Uuid;

use super::{
    chaos::crashed,
    report::{ActorReport, GetActorReport},
    shards::Shards,
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

/// Whose bucket a request draws from: the user behind a valid token, else the client
/// address. A plain value, so deciding a request copies it instead of allocating a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(Uuid),
    Ip(IpAddr),
    /// No peer address (not seen over TCP): all such requests share one bucket.
    UnknownIp,
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

/// The buckets themselves, on a clock the caller passes in (tests drive it by hand).
pub struct Buckets {
    quotas: Quotas,
    lru: LruCache<(Policy, ClientKey), u64>,
    /// The bucket being decided, while it is: the one entry a panic could leave suspect.
    deciding: Option<(Policy, ClientKey)>,
}

impl Buckets {
    pub fn new(quotas: Quotas, max_keys: NonZeroUsize) -> Self {
        Self { quotas, lru: LruCache::new(max_keys), deciding: None }
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// The most buckets kept; the least recently used is evicted beyond it.
    pub fn cap(&self) -> NonZeroUsize {
        self.lru.cap()
    }

    pub fn decide(&mut self, policy: Policy, key: ClientKey, now_ns: u64) -> Decision {
        let bucket = self.deciding.insert((policy, key));
        let decision = check(self.quotas.of(policy), self.lru.get(&*bucket).copied(), now_ns);
        if let Some(bucket) = self.deciding.take() {
            if decision.allowed {
                // `put` evicts the least recently used bucket once the cap is reached.
                self.lru.put(bucket, decision.tat_ns);
            }
        }
        decision
    }

    /// A bucket whose TAT has passed is full: forgetting it changes nothing.
    pub fn sweep(&mut self, now_ns: u64) {
        let idle: Vec<(Policy, ClientKey)> =
            self.lru.iter().filter(|(_, tat)| **tat <= now_ns).map(|(bucket, _)| *bucket).collect();
        for bucket in idle {
            self.lru.pop(&bucket);
        }
    }

    /// After a panic: every bucket is a single TAT that only ever grows, so each is either
    /// its old or its new value and both are sound; only a bucket caught mid-decision is
    /// dropped (that one client gets a fresh burst, nobody else does).
    pub fn recover(&mut self) {
        if let Some(bucket) = self.deciding.take() {
            self.lru.pop(&bucket);
        }
    }
}

pub struct RateLimiter {
    buckets: Buckets,
    /// What this shard last added to `storefront_rate_limit_keys` (the sum over shards).
    keys_reported: i64,
    /// Fault injection: until then the limiter decides nothing, as when it is down.
    down_until: Option<Instant>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    reporter: RestartReporter,
}

impl RateLimiter {
    pub fn new(quotas: Quotas, max_keys: NonZeroUsize, metrics: Arc<Metrics>, reporter: RestartReporter) -> Self {
        Self {
            buckets: Buckets::new(quotas, max_keys),
            keys_reported: 0,
            down_until: None,
            epoch: Instant::now(),
            metrics,
            reporter,
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn decide(&mut self, policy: Policy, key: ClientKey) -> Decision {
        let decision = self.buckets.decide(policy, key, self.now_ns());
        if !decision.allowed {
            self.metrics.rate_limited.with_label_values(&[policy.name()]).inc();
        }
        self.report_keys();
        decision
    }

    fn report_keys(&mut self) {
        let keys = i64::try_from(self.buckets.len()).unwrap_or(i64::MAX);
        self.metrics.rate_limit_keys.add(keys - self.keys_reported);
        self.keys_reported = keys;
    }

    fn sweep(&mut self) {
        self.buckets.sweep(self.now_ns());
        self.report_keys();
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
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Forgetting the buckets would hand every client a fresh burst on each crash.
        self.buckets.recover();
    }
}

#[derive(Message)]
#[rtype(result = "Option<Decision>")]
pub struct Check {
    pub policy: Policy,
    pub key: ClientKey,
}

impl Handler<Check> for RateLimiter {
    type Result = MessageResult<Check>;
    fn handle(&mut self, msg: Check, ctx: &mut Context<Self>) -> Self::Result {
        if self.down_until.is_some_and(|until| Instant::now() < until) {
            return MessageResult(None);
        }
        MessageResult(guarded(self, ctx, |act, _| act.decide(msg.policy, msg.key)))
    }
}

/// Fault injection: the limiter gives no decision for a while, so requests meet the
/// fail-open path exactly as when the limiter is down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GoDown(pub Duration);

impl Handler<GoDown> for RateLimiter {
    type Result = ();
    fn handle(&mut self, msg: GoDown, _ctx: &mut Context<Self>) {
        self.down_until = Instant::now().checked_add(msg.0);
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

/// How the middleware and the chaos endpoint reach the limiter: this worker's shard for
/// checks, every shard for fault injection and reports.
#[derive(Clone)]
pub struct RateLimiterClient {
    local: Option<Addr<RateLimiter>>,
    shards: Shards<RateLimiter>,
    quotas: Quotas,
    max_keys: NonZeroUsize,
    metrics: Arc<Metrics>,
    reporter: RestartReporter,
}

impl RateLimiterClient {
    pub fn new(
        workers: usize,
        quotas: Quotas,
        max_keys: NonZeroUsize,
        metrics: Arc<Metrics>,
        reporter: RestartReporter,
    ) -> Self {
        // RATE_LIMIT_MAX_KEYS bounds the replica: each shard keeps its share.
        let per_shard = max_keys.get().div_ceil(workers.max(1));
        let max_keys = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        Self { local: None, shards: Shards::new(workers), quotas, max_keys, metrics, reporter }
    }

    /// Starts this worker's shard on the current arbiter (call it inside the
    /// `HttpServer::new` factory) and returns a client that checks with it.
    pub fn on_this_worker(&self) -> Self {
        let (quotas, max_keys) = (self.quotas, self.max_keys);
        let (metrics, reporter) = (Arc::clone(&self.metrics), self.reporter.clone());
        let shard = Supervisor::start(move |_| RateLimiter::new(quotas, max_keys, metrics, reporter));
        // A restarted worker's shard is not in the registry: it still limits its own
        // clients, it just misses fault injection and the actors page.
        self.shards.publish(shard.clone());
        Self { local: Some(shard), ..self.clone() }
    }

    /// The decision; `Ok(None)` when the shard is faulted or panicked. The `default`
    /// policy (the hot path) asks this worker's shard. The `auth` policy guards sign-ins,
    /// where W times the quota would be W times the guesses, and each one costs an argon2
    /// hash anyway: it is decided by one shard for the whole replica (exact, one hop).
    pub async fn check(
        &self,
        policy: Policy,
        key: ClientKey,
        timeout: Duration,
    ) -> Result<Option<Decision>, MailboxError> {
        let home = || self.shards.each().next();
        let shard = match policy {
            Policy::Default => self.local.as_ref().or_else(home),
            Policy::Auth => home().or(self.local.as_ref()),
        }
        .ok_or(MailboxError::Closed)?;
        shard.send(Check { policy, key }).timeout(timeout).await
    }

    /// Crashes this worker's shard (the one that served the chaos request).
    pub async fn crash(&self, timeout: Duration) -> Result<Result<(), AppError>, MailboxError> {
        let shard = self.local.as_ref().or_else(|| self.shards.each().next()).ok_or(MailboxError::Closed)?;
        shard.send(Crash).timeout(timeout).await
    }

    /// Takes every shard down for a while, so every request meets the fail-open path.
    pub async fn go_down(&self, duration: Duration, timeout: Duration) -> Result<(), MailboxError> {
        let sends = self.shards.each().map(|shard| shard.send(GoDown(duration)).timeout(timeout));
        futures_util::future::join_all(sends).await.into_iter().collect()
    }

    pub fn shards(&self) -> &Shards<RateLimiter> {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn buckets(max_keys: usize) -> Buckets {
        let quotas = Quotas { default: Quota::per_second(1, 3), auth: Quota::per_minute(2) };
        Buckets::new(quotas, NonZeroUsize::new(max_keys).unwrap())
    }

    /// Client `n`'s address.
    fn ip(n: u8) -> ClientKey {
        ClientKey::Ip(IpAddr::from([192, 0, 2, n]))
    }

    fn admitted(buckets: &mut Buckets, policy: Policy, key: ClientKey, now_ns: u64, tries: usize) -> usize {
        (0..tries).filter(|_| buckets.decide(policy, key, now_ns).allowed).count()
    }

    #[test]
    fn each_policy_and_client_has_a_bucket_of_its_own() {
        let mut buckets = buckets(100);
        assert_eq!(admitted(&mut buckets, Policy::Default, ip(1), 0, 10), 3);
        assert_eq!(admitted(&mut buckets, Policy::Default, ip(2), 0, 10), 3);
        assert_eq!(admitted(&mut buckets, Policy::Auth, ip(1), 0, 10), 2);
        assert_eq!(
            admitted(&mut buckets, Policy::Default, ClientKey::User(Uuid::nil()), 0, 10),
            3,
            "a user is not an address"
        );
        assert_eq!(admitted(&mut buckets, Policy::Default, ip(1), SECOND, 10), 1, "one refill a second");
    }

    #[test]
    fn a_restart_keeps_every_bucket_but_the_one_being_decided() {
        let mut buckets = buckets(100);
        admitted(&mut buckets, Policy::Default, ip(1), 0, 3);
        admitted(&mut buckets, Policy::Default, ip(2), 0, 3);
        buckets.deciding = Some((Policy::Default, ip(2)));
        buckets.recover();
        assert_eq!(admitted(&mut buckets, Policy::Default, ip(1), 0, 3), 0, "a spent bucket stays spent");
        assert_eq!(admitted(&mut buckets, Policy::Default, ip(2), 0, 3), 3, "only the suspect one starts over");
    }

    #[test]
    fn the_cap_evicts_the_least_recent_and_sweeps_forget_only_full_buckets() {
        let mut buckets = buckets(2);
        for key in [ip(1), ip(2), ip(3)] {
            admitted(&mut buckets, Policy::Default, key, 0, 1);
        }
        assert_eq!(buckets.len(), 2);
        admitted(&mut buckets, Policy::Default, ip(3), 0, 2);
        buckets.sweep(SECOND);
        assert_eq!(
            buckets.len(),
            1,
            "client 2 (one request, refilled after 1 s) is forgotten; client 3 (three) is not"
        );
        buckets.sweep(3 * SECOND);
        assert!(buckets.is_empty());
    }

    /// One client, its requests spread round-robin over W shards (its connections landed
    /// on different workers), for a whole minute of a clock driven by hand.
    fn admitted_over_shards(workers: usize, quota: Quota, requests_per_second: u64, seconds: u64) -> Vec<(u64, usize)> {
        let quotas = Quotas { default: quota, auth: quota };
        let mut shards: Vec<Buckets> =
            (0..workers).map(|_| Buckets::new(quotas, NonZeroUsize::new(16).unwrap())).collect();
        let mut admitted = 0;
        let mut by_time = Vec::new();
        let step = SECOND / requests_per_second;
        for request in 0..requests_per_second * seconds {
            let now = request * step;
            let shard = &mut shards[usize::try_from(request).unwrap() % workers];
            if shard.decide(Policy::Default, ClientKey::User(Uuid::nil()), now).allowed {
                admitted += 1;
            }
            by_time.push((now, admitted));
        }
        by_time
    }

    #[test]
    fn sharded_buckets_admit_at_most_workers_times_burst_plus_rate_times_t() {
        let (rate, burst) = (10, 20);
        let quota = Quota::per_second(rate, burst);
        for workers in [1, 2, 4] {
            let history = admitted_over_shards(workers, quota, 1000, 60);
            for (now, admitted) in &history {
                // burst + rate * t, the refill counted up to the instant of the request.
                let bound = workers as u64 * (u64::from(burst) + u64::from(rate) * now / SECOND + 1);
                assert!(*admitted as u64 <= bound, "{workers} shards admitted {admitted} by {now} ns (bound {bound})");
            }
            let (_, total) = history.last().copied().unwrap();
            let single_shard = u64::from(burst) + u64::from(rate) * 60;
            assert!(total as u64 > (workers as u64 - 1) * single_shard, "the bound is reached, not just respected");
        }
    }

    #[test]
    fn a_client_that_stays_on_one_worker_gets_exactly_the_stated_quota() {
        let (rate, burst) = (10, 20);
        let history = admitted_over_shards(1, Quota::per_second(rate, burst), 1000, 60);
        let (_, total) = history.last().copied().unwrap();
        let expected = u64::from(burst) + u64::from(rate) * 60;
        assert!((expected - 1..=expected).contains(&(total as u64)), "{total} admitted, the quota says {expected}");
    }
}
