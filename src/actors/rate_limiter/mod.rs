//! The RateLimiter actor: one shard per HTTP worker, on that worker's arbiter, running the
//! lease protocol of `domain::rate_lease` (read the bound, what a client is told, and why,
//! there).
//!
//! Locally, each client key is owned by the shard it hashes to, which keeps its GCRA
//! ledger; a request that lands on another worker is decided by that worker's shard, either
//! by asking the owner (one cross-thread message) or from tokens the owner leased it: a
//! lease only goes to a worker the client keeps coming back to, or whose requests for the
//! key overlap. So the common case is a same-thread send: the owner deciding its own key, or
//! a holder spending a token it already has. Per client, over any t seconds, one replica
//! admits at most
//!
//! ```text
//! burst + rate × t            (S = 0, whatever the number of workers or connections)
//! ```
//!
//! With `RATE_LIMIT_REDIS_URL` every shard of every replica decides through one ledger per
//! client kept in Redis (`redis.rs`), so the cluster admits at most `burst + rate × t` per
//! client (S' = 0); a shard whose requests for a key overlap leases tokens from Redis and
//! calls it once per lease, a client sending one request at a time is decided by Redis
//! each time. What Redis admits or leases is also booked on this replica's own ledgers, so
//! that falling back to them does not hand anyone a fresh burst.
//!
//! Redis failing: a call that fails or takes longer than `RATE_LIMIT_REDIS_TIMEOUT_MS` has
//! its requests decided by the replica's own ledgers at once, and starts a round of
//! `FAILURES_TO_FALL_BACK - 1` probes (the ledger script itself, on a probe key). Only if
//! they fail too does the whole replica fall back (within one timeout of the first failed
//! call, so at most 100 ms); a worker that was merely not scheduled in time does not switch
//! it. While falling back it probes every 250 ms and returns to Redis after
//! `PROBES_TO_RETURN` good probes in a row; grants it holds from Redis are not handed back
//! meanwhile (they expire there, counted as spent).
//!
//! Beyond the ledgers: a ledger dropped because a panic struck while it was being changed,
//! or lost with a worker that died, starts afresh (that one client gets a new burst; a
//! restarted worker takes its slot over); and while a shard does not answer, the
//! replica-wide fail-open budget applies (`http::middleware::rate_limit`).

pub mod redis;

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{
    dev::{MessageResponse, OneshotSender},
    ActorFutureExt, Addr, AsyncContext, Context, Handler, MailboxError, Message, Supervisor, WrapFuture,
};
use tokio::sync::oneshot;

use self::redis::{RedisFailure, RedisLedgers};
use super::{
    failure::ActorFailure,
    restarts::ActorRestarts,
    shards::Shards,
    supervision::{guarded, supervised_actor, RestartReporter, SupervisedActor, Supervision},
    Crash,
};
use crate::{
    domain::{
        rate_lease::{
            Backend, Effect, LeaseAnswer, LeaseAsk, LeaseStats, Nanos, NoAnswer, Settlement, ShardCore, REDIS_LEASE_TTL,
        },
        rate_limit::{BucketKey, ClientKey, Decision, Policy, Quotas},
    },
    metrics::Metrics,
};

const ACTOR: &str = crate::actors::names::RATE_LIMITER;
/// How often leases are settled before they expire (and Redis probed while it is down).
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often full, idle ledgers are forgotten.
const LEDGER_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How long a holder waits for its owner (who may hold the ask up to `RECALL_WAIT`): a
/// cross-thread round trip, generous for a machine so busy its threads wait to be scheduled.
const ASK_TIMEOUT: Duration = Duration::from_millis(250);
/// How much longer than a call's timeout a round of probes may take to be counted.
const PROBE_SLACK: Nanos = 20_000_000;
/// How often a replica that fell back checks whether Redis answers again.
const REDIS_PROBE_INTERVAL: Nanos = 250_000_000;
/// Failed calls in one round (the call that failed, then the probes it started at once,
/// all within one timeout) that make a replica leave Redis.
const FAILURES_TO_FALL_BACK: u32 = 3;
/// Probes in a row that must succeed before a replica that fell back uses Redis again.
const PROBES_TO_RETURN: u32 = 3;

/// Where a replica's decisions are made: `local` (no Redis configured), `redis`, or
/// `fallback` (Redis configured but failing: local ledgers until it answers again).
/// Shared by the shards of one replica; changes are atomic swaps.
pub struct LimiterMode {
    state: AtomicU8,
    next_probe: AtomicU64,
    /// While on Redis: the end of the round of probes a failed call started, and the failed
    /// calls counted in it.
    round_until: AtomicU64,
    round_failures: AtomicU32,
    /// While falling back: probes answered in a row.
    good_probes: AtomicU32,
    metrics: Arc<Metrics>,
}

const LOCAL: u8 = 0;
const REDIS: u8 = 1;
const FALLBACK: u8 = 2;

impl LimiterMode {
    fn new(redis: bool, metrics: Arc<Metrics>) -> Self {
        let mode = Self {
            state: AtomicU8::new(if redis { REDIS } else { LOCAL }),
            next_probe: AtomicU64::new(0),
            round_until: AtomicU64::new(0),
            round_failures: AtomicU32::new(0),
            good_probes: AtomicU32::new(0),
            metrics,
        };
        mode.publish();
        mode
    }

    pub fn name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            REDIS => "redis",
            FALLBACK => "fallback",
            _ => "local",
        }
    }

    fn backend(&self) -> Backend {
        if self.state.load(Ordering::Relaxed) == REDIS {
            Backend::Redis
        } else {
            Backend::Local
        }
    }

    fn falling_back(&self) -> bool {
        self.state.load(Ordering::Relaxed) == FALLBACK
    }

    fn publish(&self) {
        let redis = self.state.load(Ordering::Acquire) == REDIS;
        self.metrics.rate_limiter_backend.with_label_values(&["redis"]).set(i64::from(redis));
        self.metrics.rate_limiter_backend.with_label_values(&["local"]).set(i64::from(!redis));
    }

    /// Switches the replica to its own ledgers (at start-up when Redis is not there, or
    /// when a round of probes failed).
    fn fall_back(&self, failure: &RedisFailure, now: Nanos) {
        if self.state.compare_exchange(REDIS, FALLBACK, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.next_probe.store(now.saturating_add(REDIS_PROBE_INTERVAL), Ordering::Release);
            self.good_probes.store(0, Ordering::Release);
            self.metrics.rate_limiter_fallbacks.inc();
            self.publish();
            tracing::warn!(%failure, "rate limiter: Redis failed; this replica limits on its own until Redis answers");
        }
    }

    /// A call failed while on Redis. True when it starts a round: the caller then sends
    /// `FAILURES_TO_FALL_BACK - 1` probes at once. Failures of other calls during a round
    /// do not count (a worker stalled past every timeout of its calls is not Redis failing).
    fn call_failed(&self, now: Nanos, round: Nanos) -> bool {
        if self.state.load(Ordering::Acquire) != REDIS {
            return false;
        }
        let until = self.round_until.load(Ordering::Acquire);
        let started = now >= until
            && self
                .round_until
                .compare_exchange(until, now.saturating_add(round), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if started {
            self.round_failures.store(1, Ordering::Release);
        }
        started
    }

    /// A probe of a round failed: the replica falls back once every call of the round did.
    fn probe_failed(&self, failure: &RedisFailure, now: Nanos) {
        if self.round_failures.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= FAILURES_TO_FALL_BACK {
            self.fall_back(failure, now);
        }
    }

    /// A probe answered: on Redis, the round is over (Redis works); falling back, one more
    /// in a row, and enough of them return the replica to Redis.
    fn probe_answered(&self) {
        let state = self.state.load(Ordering::Acquire);
        if state == REDIS {
            self.round_failures.store(0, Ordering::Release);
        }
        let enough =
            state == FALLBACK && self.good_probes.fetch_add(1, Ordering::AcqRel).saturating_add(1) >= PROBES_TO_RETURN;
        if enough && self.state.compare_exchange(FALLBACK, REDIS, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.publish();
            tracing::info!("rate limiter: Redis answers again; limits are shared again");
        }
    }

    /// A probe failed while falling back: the count of good ones starts again.
    fn fallback_probe_failed(&self) {
        self.good_probes.store(0, Ordering::Release);
    }

    /// True for one shard per probe interval while falling back.
    fn claim_probe(&self, now: Nanos) -> bool {
        if self.state.load(Ordering::Acquire) != FALLBACK {
            return false;
        }
        let due = self.next_probe.load(Ordering::Acquire);
        now >= due
            && self
                .next_probe
                .compare_exchange(due, now.saturating_add(REDIS_PROBE_INTERVAL), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Where Redis is, when it is used.
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    /// The longest a request waits on Redis before the replica falls back.
    pub timeout: Duration,
    /// This replica, in the holder names Redis keeps (`<replica>:<slot>`).
    pub replica: String,
}

/// What every shard of a replica shares: settings, the clock, the mode, the registry.
#[derive(Clone)]
struct Shared {
    quotas: Quotas,
    max_keys: NonZeroUsize,
    /// The one clock of the replica: owners and holders compare grant expiries on it.
    epoch: Instant,
    mode: Arc<LimiterMode>,
    redis: Option<RedisTarget>,
    shards: Shards<RateLimiter>,
    /// Grant ids for every shard of the replica: only growing, so a late settlement never
    /// matches a newer grant, whichever ledger or shard was made anew in between.
    grant_ids: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    reporter: RestartReporter,
    /// While the limiter backs off from restarting (it panicked too often), requests meet
    /// the fail-open budget without asking it.
    restarts: Arc<ActorRestarts>,
}

impl Shared {
    fn now(&self) -> Nanos {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// How a request or an ask that waits is answered when its turn comes.
enum Pending {
    Check(oneshot::Sender<Option<Decision>>),
    Ask(oneshot::Sender<Option<LeaseAnswer>>),
}

pub struct RateLimiter {
    core: ShardCore<Pending>,
    slot: Option<usize>,
    shared: Shared,
    redis: Option<RedisLedgers>,
    /// What this shard last added to the replica-wide gauges and counters.
    keys_reported: i64,
    stats_reported: LeaseStats,
    /// Fault injection: until then the limiter decides nothing, as when it is down.
    down_until: Option<Instant>,
    supervision: Supervision,
}

impl RateLimiter {
    fn new(slot: Option<usize>, shared: Shared) -> Self {
        let workers = shared.shards.configured();
        let supervision = shared.reporter.supervision(ACTOR);
        Self {
            core: ShardCore::new(slot, workers, shared.quotas, shared.max_keys, Arc::clone(&shared.grant_ids)),
            slot,
            shared,
            redis: None,
            keys_reported: 0,
            stats_reported: LeaseStats::default(),
            down_until: None,
            supervision,
        }
    }

    fn is_down(&self) -> bool {
        self.down_until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs one step of the protocol under the panic guard, then carries out its effects.
    fn step<T>(
        &mut self,
        ctx: &mut Context<Self>,
        work: impl FnOnce(&mut ShardCore<Pending>, Nanos, &mut Vec<Effect<Pending>>) -> T,
    ) -> Option<T> {
        let mut effects = Vec::new();
        let now = self.shared.now();
        let outcome = guarded(self, ctx, |act, _| work(&mut act.core, now, &mut effects));
        self.carry_out_all(ctx, effects, now);
        outcome
    }

    fn carry_out_all(&mut self, ctx: &mut Context<Self>, effects: Vec<Effect<Pending>>, now: Nanos) {
        for effect in effects {
            self.carry_out(ctx, effect, now);
        }
    }

    fn carry_out(&mut self, ctx: &mut Context<Self>, effect: Effect<Pending>, now: Nanos) {
        match effect {
            Effect::Decide(Pending::Check(tx), decision) => {
                let _ = tx.send(decision);
            }
            Effect::Answer(Pending::Ask(tx), answer) => {
                let _ = tx.send(Some(answer));
            }
            // Each kind of waiter is answered in its own kind; anything else answers nothing.
            Effect::Decide(Pending::Ask(tx), _) => {
                let _ = tx.send(None);
            }
            Effect::Answer(Pending::Check(tx), _) => {
                let _ = tx.send(None);
            }
            Effect::Ask { owner, ask } => self.ask_owner(ctx, owner, ask),
            Effect::AskRedis { ask } => self.call_redis(ctx, ask, true),
            Effect::SettleRedis { key, settlement } => {
                // Falling back, a grant is not handed back (each call would wait out the
                // timeout): Redis counts it as spent when it expires.
                if !self.shared.mode.falling_back() {
                    let ask = LeaseAsk {
                        key,
                        from: self.core_holder(),
                        settle: Some(settlement),
                        want: 0,
                        concurrent: false,
                    };
                    self.call_redis(ctx, ask, false);
                }
            }
            Effect::Settle { owner, key, settlement } => {
                let from = self.core_holder();
                if let Some(owner) = self.shared.shards.get(owner) {
                    // A lost settlement strands the tokens until the grant expires: never a wait here.
                    let _ = owner.try_send(SettleLease { from, key, settlement });
                }
            }
            Effect::Charge { owner, key, tokens } => {
                if let Some(owner) = self.shared.shards.get(owner) {
                    // A lost charge leaves the local ledger fuller than it should be after a fall-back.
                    let _ = owner.try_send(ChargeLedger { key, tokens });
                }
            }
            Effect::Recall { holder, key, grants } => {
                if let (Some(holder), Some(owner)) = (self.shared.shards.get(holder), self.slot) {
                    let _ = holder.try_send(RecallLease { owner, key, grants });
                }
            }
            Effect::WakeAt(at) => {
                ctx.run_later(Duration::from_nanos(at.saturating_sub(now)), |act, ctx| {
                    act.step(ctx, |core, now, fx| core.wake(now, fx));
                });
            }
        }
    }

    fn core_holder(&self) -> usize {
        self.slot.unwrap_or(self.shared.shards.configured())
    }

    fn ask_owner(&mut self, ctx: &mut Context<Self>, owner: usize, ask: LeaseAsk) {
        let Some(owner) = self.shared.shards.get(owner).cloned() else {
            self.step(ctx, |core, now, fx| core.on_answer(ask.key, Backend::Local, Err(NO_ANSWER), now, fx));
            return;
        };
        let reply = owner.send(AskLease(ask)).timeout(ASK_TIMEOUT);
        ctx.spawn(reply.into_actor(self).map(move |reply, act, ctx| {
            let answer = reply.ok().flatten().ok_or(NO_ANSWER);
            act.step(ctx, |core, now, fx| core.on_answer(ask.key, Backend::Local, answer, now, fx));
        }));
    }

    fn call_redis(&mut self, ctx: &mut Context<Self>, ask: LeaseAsk, decide: bool) {
        let Some(redis) = self.redis.clone() else {
            if decide {
                self.step(ctx, |core, now, fx| {
                    core.on_answer(ask.key, Backend::Redis, Err(NoAnswer { fall_back: true }), now, fx)
                });
            }
            return;
        };
        let quota = self.shared.quotas.of(ask.key.0).in_whole_micros();
        let sent_at = self.shared.now();
        let call = redis.serve(quota, ask, decide, REDIS_LEASE_TTL, sent_at);
        ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            let metrics = &act.shared.metrics;
            let answer = match result {
                Ok(answer) => {
                    metrics.rate_limiter_redis_calls.with_label_values(&["ok"]).inc();
                    Ok(answer)
                }
                Err(failure) => {
                    metrics.rate_limiter_redis_calls.with_label_values(&["failed"]).inc();
                    act.redis_failed(ctx, &failure);
                    Err(NoAnswer { fall_back: true })
                }
            };
            if decide {
                act.step(ctx, |core, now, fx| core.on_answer(ask.key, Backend::Redis, answer, now, fx));
            }
        }));
    }

    /// A call failed: its requests are decided locally (the caller does that); if this
    /// starts a round, probes go out at once, and the replica falls back only if they fail.
    fn redis_failed(&mut self, ctx: &mut Context<Self>, failure: &RedisFailure) {
        let Some(redis) = self.redis.clone() else { return };
        let round = u64::try_from(redis.timeout().as_nanos()).unwrap_or(u64::MAX).saturating_add(PROBE_SLACK);
        if !self.shared.mode.call_failed(self.shared.now(), round) {
            return;
        }
        tracing::warn!(%failure, "rate limiter: a Redis call failed; its requests were decided locally, probing Redis");
        for _ in 1..FAILURES_TO_FALL_BACK {
            ctx.spawn(redis.clone().probe().into_actor(self).map(|answer, act, _| {
                act.count_call(&answer);
                match answer {
                    Ok(()) => act.shared.mode.probe_answered(),
                    Err(failure) => act.shared.mode.probe_failed(&failure, act.shared.now()),
                }
            }));
        }
    }

    fn count_call<T>(&self, answer: &Result<T, RedisFailure>) {
        let result = if answer.is_ok() { "ok" } else { "failed" };
        self.shared.metrics.rate_limiter_redis_calls.with_label_values(&[result]).inc();
    }

    fn sweep_leases(&mut self, ctx: &mut Context<Self>) {
        self.step(ctx, |core, now, fx| core.sweep_leases(now, fx));
        self.report_counts();
        let now = self.shared.now();
        if let Some(redis) = self.redis.clone().filter(|_| self.shared.mode.claim_probe(now)) {
            ctx.spawn(redis.probe().into_actor(self).map(|answer, act, _| {
                act.count_call(&answer);
                match answer {
                    Ok(()) => act.shared.mode.probe_answered(),
                    Err(_) => act.shared.mode.fallback_probe_failed(),
                }
            }));
        }
    }

    /// Adds what changed since the last report to the replica-wide metrics.
    fn report_counts(&mut self) {
        let metrics = &self.shared.metrics;
        let keys = i64::try_from(self.core.owned_len()).unwrap_or(i64::MAX);
        metrics.rate_limit_keys.add(keys - self.keys_reported);
        self.keys_reported = keys;
        let (now, before) = (self.core.stats, self.stats_reported);
        for (event, current, previous) in [
            ("asked", now.asks, before.asks),
            ("granted", now.grants, before.grants),
            ("tokens_granted", now.tokens_granted, before.tokens_granted),
            ("settled", now.settlements, before.settlements),
            ("recalled", now.recalls, before.recalls),
            ("expired", now.expired, before.expired),
            ("refused_locally", now.refused_locally, before.refused_locally),
            ("evicted", now.evicted, before.evicted),
            ("decided_without_ledger", now.unkept, before.unkept),
        ] {
            metrics.rate_limiter_leases.with_label_values(&[event]).inc_by(current.saturating_sub(previous));
        }
        self.stats_reported = now;
    }
}

const NO_ANSWER: NoAnswer = NoAnswer { fall_back: false };

supervised_actor!(RateLimiter);

impl SupervisedActor for RateLimiter {
    fn start(&mut self, ctx: &mut Context<Self>) {
        if self.redis.is_none() {
            if let Some(target) = self.shared.redis.clone() {
                let holder = format!("{}:{}", target.replica, self.core_holder());
                match RedisLedgers::connect(&target.url, holder, target.timeout) {
                    Ok(redis) => {
                        // Redis not there at start-up: fall back at once, not at the first request.
                        ctx.spawn(redis.clone().warm_up().into_actor(self).map(|warmed, act, _| {
                            if let Err(failure) = warmed {
                                act.shared.mode.fall_back(&failure, act.shared.now());
                            }
                        }));
                        self.redis = Some(redis);
                    }
                    Err(error) => {
                        self.shared.mode.fall_back(&RedisFailure::Redis(error), self.shared.now());
                    }
                }
            }
        }
        // Both run through `step`, which guards the protocol's work.
        ctx.run_interval(LEASE_SWEEP_INTERVAL, |act, ctx| act.sweep_leases(ctx));
        ctx.run_interval(LEDGER_SWEEP_INTERVAL, |act, ctx| {
            act.step(ctx, |core, now, _| core.sweep_ledgers(now));
        });
    }

    fn recover(&mut self, ctx: &mut Context<Self>) {
        // The ledgers are kept: forgetting them would hand every client a fresh burst.
        let (mut effects, now) = (Vec::new(), self.shared.now());
        self.core.recover(now, &mut effects);
        self.carry_out_all(ctx, effects, now);
    }

    fn report_state(&mut self) -> serde_json::Value {
        self.report_counts();
        let metrics = &self.shared.metrics;
        let limited = |policy: Policy| metrics.rate_limited.with_label_values(&[policy.name()]).get();
        let leases = |event: &str| metrics.rate_limiter_leases.with_label_values(&[event]).get();
        let redis_calls = |result: &str| metrics.rate_limiter_redis_calls.with_label_values(&[result]).get();
        serde_json::json!({
            "mode": self.shared.mode.name(),
            "keys_tracked": self.core.owned_len(), "leases_held": self.core.held_len(),
            "max_keys": self.core.cap().get(), "requests_waiting": self.core.parked_len(),
            "limited": {"default": limited(Policy::Default), "auth": limited(Policy::Auth)},
            "leases": {
                "asked": leases("asked"), "granted": leases("granted"),
                "tokens_granted": leases("tokens_granted"), "settled": leases("settled"),
                "recalled": leases("recalled"), "expired": leases("expired"),
                "refused_locally": leases("refused_locally"),
            },
            "keys": {"evicted": leases("evicted"), "decided_without_ledger": leases("decided_without_ledger")},
            "redis": {
                "configured": self.shared.redis.is_some(),
                "calls_ok": redis_calls("ok"), "calls_failed": redis_calls("failed"),
                "fallbacks": metrics.rate_limiter_fallbacks.get(),
            },
        })
    }
}

/// An answer now, or one the shard gives when the request's turn comes (`None` when the
/// shard stopped before it could).
pub enum Reply<T> {
    Now(Option<T>),
    Later(oneshot::Receiver<Option<T>>),
}

impl<M, T> MessageResponse<RateLimiter, M> for Reply<T>
where
    M: Message<Result = Option<T>>,
    T: 'static,
{
    fn handle(self, ctx: &mut Context<RateLimiter>, tx: Option<OneshotSender<Option<T>>>) {
        match self {
            Self::Now(value) => {
                if let Some(tx) = tx {
                    let _ = tx.send(value);
                }
            }
            Self::Later(rx) => {
                ctx.spawn(actix::fut::wrap_future::<_, RateLimiter>(async move {
                    let value = rx.await.unwrap_or(None);
                    if let Some(tx) = tx {
                        let _ = tx.send(value);
                    }
                }));
            }
        }
    }
}

/// Decides one request of `key` under `policy`.
#[derive(Message)]
#[rtype(result = "Option<Decision>")]
pub struct Check {
    pub policy: Policy,
    pub key: ClientKey,
}

impl Handler<Check> for RateLimiter {
    type Result = Reply<Decision>;
    fn handle(&mut self, msg: Check, ctx: &mut Context<Self>) -> Self::Result {
        if self.is_down() {
            return Reply::Now(None);
        }
        let backend = self.shared.mode.backend();
        let mut later = None;
        let decided = self.step(ctx, |core, now, fx| {
            let responder = || {
                let (tx, rx) = oneshot::channel();
                later = Some(rx);
                Pending::Check(tx)
            };
            core.check((msg.policy, msg.key), now, backend, responder, fx)
        });
        match (decided.flatten(), later) {
            (Some(decision), _) => Reply::Now(Some(decision)),
            (None, Some(rx)) => Reply::Later(rx),
            (None, None) => Reply::Now(None),
        }
    }
}

/// A holder asks the owner of `ask.key` to decide a request and lease it tokens.
#[derive(Message)]
#[rtype(result = "Option<LeaseAnswer>")]
pub struct AskLease(pub LeaseAsk);

impl Handler<AskLease> for RateLimiter {
    type Result = Reply<LeaseAnswer>;
    fn handle(&mut self, msg: AskLease, ctx: &mut Context<Self>) -> Self::Result {
        if self.is_down() {
            return Reply::Now(None);
        }
        let mut later = None;
        let answered = self.step(ctx, |core, now, fx| {
            let responder = || {
                let (tx, rx) = oneshot::channel();
                later = Some(rx);
                Pending::Ask(tx)
            };
            core.on_ask(msg.0, now, responder, fx)
        });
        match (answered.flatten(), later) {
            (Some(answer), _) => Reply::Now(Some(answer)),
            (None, Some(rx)) => Reply::Later(rx),
            (None, None) => Reply::Now(None),
        }
    }
}

/// A holder gives a grant back to its owner.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SettleLease {
    pub from: usize,
    pub key: BucketKey,
    pub settlement: Settlement,
}

impl Handler<SettleLease> for RateLimiter {
    type Result = ();
    fn handle(&mut self, msg: SettleLease, ctx: &mut Context<Self>) {
        self.step(ctx, |core, now, fx| core.on_settle(msg.from, msg.key, msg.settlement, now, fx));
    }
}

/// A holder's Redis answer, booked on the local owner of its key.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChargeLedger {
    pub key: BucketKey,
    pub tokens: u32,
}

impl Handler<ChargeLedger> for RateLimiter {
    type Result = ();
    fn handle(&mut self, msg: ChargeLedger, ctx: &mut Context<Self>) {
        self.step(ctx, |core, now, _| core.on_charge(msg.key, msg.tokens, now));
    }
}

/// An owner wants grants back.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecallLease {
    pub owner: usize,
    pub key: BucketKey,
    pub grants: Vec<u64>,
}

impl Handler<RecallLease> for RateLimiter {
    type Result = ();
    fn handle(&mut self, msg: RecallLease, ctx: &mut Context<Self>) {
        self.step(ctx, |core, now, fx| core.on_recall(msg.owner, msg.key, &msg.grants, now, fx));
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

/// How the middleware and the chaos endpoint reach the limiter: this worker's shard for
/// checks, every shard for fault injection and reports.
#[derive(Clone)]
pub struct RateLimiterClient {
    local: Option<Addr<RateLimiter>>,
    shared: Shared,
}

impl RateLimiterClient {
    pub fn new(
        workers: usize,
        quotas: Quotas,
        max_keys: NonZeroUsize,
        redis: Option<RedisTarget>,
        metrics: Arc<Metrics>,
        reporter: RestartReporter,
    ) -> Self {
        // RATE_LIMIT_MAX_KEYS bounds the replica: each shard keeps its share.
        let per_shard = max_keys.get().div_ceil(workers.max(1));
        let max_keys = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        let mode = Arc::new(LimiterMode::new(redis.is_some(), Arc::clone(&metrics)));
        let shared = Shared {
            quotas,
            max_keys,
            epoch: Instant::now(),
            mode,
            redis,
            shards: Shards::new(workers),
            grant_ids: Arc::new(AtomicU64::new(0)),
            metrics,
            restarts: reporter.restarts_of(ACTOR),
            reporter,
        };
        Self { local: None, shared }
    }

    /// Starts this worker's shard on the current arbiter (call it inside the
    /// `HttpServer::new` factory) and returns a client that checks with it.
    pub fn on_this_worker(&self) -> Self {
        // A worker that actix started in place of a dead one takes the dead one's slot over
        // (its keys start afresh here); one started while every slot has a live shard gets
        // none: it owns no key and holds leases from the others.
        let slot = self.shared.shards.claim();
        let shared = self.shared.clone();
        let shard = Supervisor::start(move |ctx: &mut Context<RateLimiter>| {
            // The mailbox outlives restarts, so this is set once.
            ctx.set_mailbox_capacity(1024);
            RateLimiter::new(slot, shared)
        });
        if let Some(slot) = slot {
            self.shared.shards.fill(slot, shard.clone());
        }
        Self { local: Some(shard), shared: self.shared.clone() }
    }

    /// The decision; `Ok(None)` when the shard is faulted, backing off or could not decide.
    pub async fn check(
        &self,
        policy: Policy,
        key: ClientKey,
        timeout: Duration,
    ) -> Result<Option<Decision>, MailboxError> {
        if self.shared.restarts.is_down() {
            return Ok(None);
        }
        let shard = self.local.as_ref().or_else(|| self.shared.shards.each().next()).ok_or(MailboxError::Closed)?;
        shard.send(Check { policy, key }).timeout(timeout).await
    }

    /// How long a decision may take at most: a Redis call, then a local one if it failed
    /// (an ask to the owner, which may hold it while it recalls).
    pub fn decision_timeout(&self) -> Duration {
        let redis = self.shared.redis.as_ref().map_or(Duration::ZERO, |redis| redis.timeout);
        ASK_TIMEOUT + Duration::from_millis(50) + redis
    }

    /// `local`, `redis` or `fallback`.
    pub fn mode(&self) -> &'static str {
        self.shared.mode.name()
    }

    /// Crashes this worker's shard (the one that served the chaos request).
    pub async fn crash(&self, timeout: Duration) -> Result<Result<(), ActorFailure>, MailboxError> {
        let shard = self.local.as_ref().or_else(|| self.shared.shards.each().next()).ok_or(MailboxError::Closed)?;
        shard.send(Crash).timeout(timeout).await
    }

    /// Takes every shard down for a while, so every request meets the fail-open path.
    pub async fn go_down(&self, duration: Duration, timeout: Duration) -> Result<(), MailboxError> {
        let sends = self.shared.shards.each().map(|shard| shard.send(GoDown(duration)).timeout(timeout));
        futures_util::future::join_all(sends).await.into_iter().collect()
    }

    pub fn shards(&self) -> &Shards<RateLimiter> {
        &self.shared.shards
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use actix::Arbiter;

    use super::*;
    use crate::{
        actors::supervision::ActorRestarted,
        domain::{rate_lease::owner_of, rate_limit::Quota},
    };

    struct Ledger;
    impl actix::Actor for Ledger {
        type Context = Context<Self>;
    }
    impl Handler<ActorRestarted> for Ledger {
        type Result = ();
        fn handle(&mut self, _: ActorRestarted, _: &mut Context<Self>) {}
    }

    /// This worker's client, made on `arbiter` as the HTTP server's factory makes it.
    async fn worker(base: &RateLimiterClient, arbiter: &Arbiter) -> RateLimiterClient {
        let (sender, receiver) = oneshot::channel();
        let base = base.clone();
        arbiter.spawn_fn(move || {
            let _ = sender.send(base.on_this_worker());
        });
        receiver.await.expect("the worker started its shard")
    }

    /// One failed call starts a round of probes and switches nothing; only a round whose
    /// probes fail too does. Back on Redis only after `PROBES_TO_RETURN` good probes in a row.
    #[test]
    fn a_replica_leaves_redis_only_when_probes_fail_too_and_returns_after_several_good_ones() {
        let metrics = Arc::new(Metrics::new());
        let mode = LimiterMode::new(true, Arc::clone(&metrics));
        let failure = || RedisFailure::Timeout(Duration::from_millis(50));
        let round = 70_000_000;
        assert!(mode.call_failed(0, round), "the first failure starts a round");
        assert!(!mode.call_failed(10_000_000, round), "others in the round only wait for its probes");
        mode.probe_failed(&failure(), 50_000_000);
        mode.probe_answered();
        assert_eq!(mode.name(), "redis", "one probe answered: Redis works");
        assert!(mode.call_failed(round, round), "a new round");
        mode.probe_failed(&failure(), round + 50_000_000);
        assert_eq!(mode.name(), "redis");
        mode.probe_failed(&failure(), round + 50_000_000);
        assert_eq!(mode.name(), "fallback", "the failed call and both probes");
        assert_eq!(metrics.rate_limiter_fallbacks.get(), 1);
        for good in 1..PROBES_TO_RETURN {
            mode.probe_answered();
            assert_eq!(mode.name(), "fallback", "{good} good probe(s) are not enough");
        }
        mode.fallback_probe_failed();
        for _ in 0..PROBES_TO_RETURN - 1 {
            mode.probe_answered();
        }
        assert_eq!(mode.name(), "fallback", "a failed probe starts the count again");
        mode.probe_answered();
        assert_eq!(mode.name(), "redis");
        assert_eq!(metrics.rate_limiter_backend.with_label_values(&["redis"]).get(), 1);
    }

    /// A worker dies with its shard; until a worker takes its slot over, the keys it owned
    /// cannot be decided on another worker. The worker actix starts in its place takes the
    /// slot over, and they can again.
    #[actix_rt::test]
    async fn a_restarted_worker_takes_over_the_keys_of_the_dead_one() {
        let metrics = Arc::new(Metrics::new());
        let registry = crate::actors::restarts::RestartRegistry::new(Default::default());
        let reporter = RestartReporter::new(Arc::clone(&metrics), actix::Actor::start(Ledger).recipient(), registry);
        let quotas = Quotas { default: Quota::per_second(10, 10), auth: Quota::per_minute(3) };
        let keys = NonZeroUsize::new(100).unwrap();
        let base = RateLimiterClient::new(2, quotas, keys, None, metrics, reporter);
        let (first, second) = (Arbiter::new(), Arbiter::new());
        let survivor = worker(&base, &first).await;
        let doomed = worker(&base, &second).await;
        // Clients owned by the second worker's slot, each asked about once on the first
        // worker (so no lease for them is held there).
        let mut theirs = (0..=255)
            .map(|n| ClientKey::Ip(IpAddr::from([192, 0, 2, n])))
            .filter(|client| owner_of(&(Policy::Default, *client), 2) == 1);
        let timeout = Duration::from_secs(10);
        let mut decided = |client: &RateLimiterClient| {
            let (client, theirs) = (client.clone(), theirs.next().unwrap());
            async move { client.check(Policy::Default, theirs, timeout).await.ok().flatten() }
        };
        assert!(decided(&survivor).await.is_some_and(|decision| decision.allowed), "asked the owner");
        drop(doomed);
        second.stop();
        let deadline = Instant::now() + timeout;
        while base.shards().get(1).is_some_and(|shard| shard.connected()) {
            assert!(Instant::now() < deadline, "the dead worker's shard still answers");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(decided(&survivor).await.is_none(), "no owner for its keys");
        let third = Arbiter::new();
        let _successor = worker(&base, &third).await;
        assert!(base.shards().get(1).is_some_and(|shard| shard.connected()), "the slot was taken over");
        assert!(decided(&survivor).await.is_some_and(|decision| decision.allowed), "its keys are decided again");
        first.stop();
        third.stop();
    }
}
