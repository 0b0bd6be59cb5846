//! The database circuit breaker. Without it every request in an outage spends
//! `DB_CONNECT_TIMEOUT_MS` waiting for a connection, the queue fills and callers wait out
//! `DB_TIMEOUT_MS`. With it: after `DB_BREAKER_FAILURES` consecutive connection failures
//! (or a failed health probe) the breaker opens and database work is refused at once
//! with 503 + `Retry-After`, without touching the pool. After `DB_BREAKER_COOLDOWN_MS`
//! it turns half-open and exactly one trial decides: success closes it, failure opens it
//! for another cooldown.
//!
//! The trial is the health probe, on its own thread and connection. Letting a request be
//! the trial was measured to cost that request `DB_CONNECT_TIMEOUT_MS` (r2d2 keeps
//! retrying until its timeout) once per cooldown — enough to put p99 of refused requests
//! at 250 ms. The probe pays that instead, and nobody is waiting on it.
//!
//! The state is atomics only: the gateway (cloned into every handler) and the executor
//! threads read it on every request without a lock. Each transition is won by exactly one
//! compare-exchange, so it is counted, logged and announced exactly once.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{Message, Recipient};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    db::{error::Unavailable, DbError},
    metrics::Metrics,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// One state change, sent to the Health actor (readiness, and the `ops` topic's
/// `breaker.changed` event with data `{from, to, at, reason}`).
#[derive(Debug, Clone, Message, Serialize)]
#[rtype(result = "()")]
pub struct BreakerChanged {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: DateTime<Utc>,
    pub reason: String,
}

pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

pub struct DbBreaker {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker last opened.
    opened_at_ms: AtomicU64,
    settings: BreakerSettings,
    epoch: Instant,
    metrics: Arc<Metrics>,
    listener: Recipient<BreakerChanged>,
}

impl DbBreaker {
    pub fn new(settings: BreakerSettings, metrics: Arc<Metrics>, listener: Recipient<BreakerChanged>) -> Arc<Self> {
        metrics.ops.db_breaker_state.set(BreakerState::Closed as i64);
        Arc::new(Self {
            state: AtomicU8::new(BreakerState::Closed as u8),
            consecutive_failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            settings,
            epoch: Instant::now(),
            metrics,
            listener,
        })
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    pub fn failure_threshold(&self) -> u32 {
        self.settings.failure_threshold
    }

    pub fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }

    /// Whether a request may reach the pool: only while closed. A refusal costs one atomic
    /// load and says when to come back.
    pub fn admit(&self) -> Result<(), DbError> {
        match self.state() {
            BreakerState::Closed => Ok(()),
            _ => Err(refusal(self.cooldown_remaining())),
        }
    }

    /// The verdict of one request's attempt to get a connection from the pool.
    pub fn record_connection(&self, connected: bool, error: impl FnOnce() -> String) {
        if connected {
            self.consecutive_failures.store(0, Ordering::Release);
            return;
        }
        if self.state() == BreakerState::Closed {
            let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= self.settings.failure_threshold {
                self.open_from(BreakerState::Closed, || {
                    format!("{failures} consecutive connection failures: {}", error())
                });
            }
        }
    }

    /// A health probe (its own thread and connection, never the request queue) failed:
    /// it opens a closed breaker, and once a cooldown is over it was the failed trial.
    pub fn probe_failed(&self, error: &str) {
        self.open_from(BreakerState::Closed, || format!("health probe failed: {error}"));
        if self.begin_trial() {
            self.open_from(BreakerState::HalfOpen, || format!("trial probe failed: {error}"));
        }
    }

    /// A health probe connected: once the cooldown is over it is the trial that closes the
    /// breaker, whether or not requests arrive (a replica taken out of rotation by its
    /// failing readiness would otherwise never see one).
    pub fn probe_passed(&self) {
        if self.begin_trial() {
            self.consecutive_failures.store(0, Ordering::Release);
            self.transition(BreakerState::HalfOpen, BreakerState::Closed, || "trial probe connected".into());
        }
    }

    /// Open with the cooldown over → half-open. True when the breaker is half-open now.
    fn begin_trial(&self) -> bool {
        if self.state() == BreakerState::Open && self.cooldown_remaining().is_zero() {
            self.transition(BreakerState::Open, BreakerState::HalfOpen, || "cooldown elapsed; probing".into());
        }
        self.state() == BreakerState::HalfOpen
    }

    fn open_from(&self, from: BreakerState, reason: impl FnOnce() -> String) {
        // Stamp the opening before the state flips, so no reader sees "open" with an old
        // stamp and lets a trial through at once.
        let previous = self.opened_at_ms.swap(self.now_ms(), Ordering::AcqRel);
        if !self.transition(from, BreakerState::Open, reason) {
            self.opened_at_ms.store(previous, Ordering::Release);
        }
    }

    fn cooldown_remaining(&self) -> Duration {
        let opened = Duration::from_millis(self.opened_at_ms.load(Ordering::Acquire));
        (opened + self.settings.cooldown).saturating_sub(self.epoch.elapsed())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Moves `from` → `to` if the breaker is still in `from`; true when this call did it.
    fn transition(&self, from: BreakerState, to: BreakerState, reason: impl FnOnce() -> String) -> bool {
        if self.state.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let reason = reason();
        let ops = &self.metrics.ops;
        ops.db_breaker_state.set(to as i64);
        ops.db_breaker_transitions.with_label_values(&[to.name()]).inc();
        if to == BreakerState::Open {
            tracing::warn!(from = from.name(), to = to.name(), %reason, "database breaker opened");
        } else {
            tracing::info!(from = from.name(), to = to.name(), %reason, "database breaker changed");
        }
        // `do_send` because a transition must never be dropped for a full mailbox; they are
        // rare (one per cooldown at most while the database is down).
        self.listener.do_send(BreakerChanged { from, to, at: Utc::now(), reason });
        true
    }
}

impl DbBreaker {
    /// The breaker's row in the actors API.
    pub fn report(&self) -> super::report::ActorReport {
        use super::report::{ActorKind, ActorReport, Instances};
        let remaining = match self.state() {
            BreakerState::Open => Some(self.cooldown_remaining().as_millis() as u64),
            _ => None,
        };
        let transitions =
            |to: BreakerState| self.metrics.ops.db_breaker_transitions.with_label_values(&[to.name()]).get();
        ActorReport::new(
            "db_breaker",
            ActorKind::Breaker,
            Instances { configured: 1, alive: 1 },
            serde_json::json!({
                "state": self.state(), "consecutive_failures": self.consecutive_failures(),
                "failure_threshold": self.settings.failure_threshold,
                "cooldown_ms": self.settings.cooldown.as_millis() as u64, "cooldown_remaining_ms": remaining,
                "transitions": {
                    "open": transitions(BreakerState::Open), "half_open": transitions(BreakerState::HalfOpen),
                    "closed": transitions(BreakerState::Closed),
                },
            }),
        )
    }
}

fn refusal(retry_after: Duration) -> DbError {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    DbError::Unavailable(Unavailable::BreakerOpen { retry_after_secs: u64::try_from(seconds).unwrap_or(u64::MAX) })
}

#[cfg(test)]
mod tests {
    use actix::{Actor, Context, Handler};

    use super::*;

    /// Stands in for the Health actor: counts the announcements.
    struct Listener(Arc<AtomicU32>);

    impl Actor for Listener {
        type Context = Context<Self>;
    }

    impl Handler<BreakerChanged> for Listener {
        type Result = ();
        fn handle(&mut self, _msg: BreakerChanged, _ctx: &mut Context<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn transitions(metrics: &Metrics, to: BreakerState) -> u64 {
        metrics.ops.db_breaker_transitions.with_label_values(&[to.name()]).get()
    }

    #[actix_rt::test]
    async fn opens_after_consecutive_failures_and_only_a_probe_after_the_cooldown_closes_it() {
        let metrics = Arc::new(Metrics::new());
        let heard = Arc::new(AtomicU32::new(0));
        let listener = Listener(Arc::clone(&heard)).start().recipient();
        let cooldown = Duration::from_millis(30);
        let breaker =
            DbBreaker::new(BreakerSettings { failure_threshold: 3, cooldown }, Arc::clone(&metrics), listener);

        breaker.record_connection(false, || "refused".into());
        breaker.record_connection(false, || "refused".into());
        breaker.record_connection(true, String::new);
        breaker.record_connection(false, || "refused".into());
        breaker.record_connection(false, || "refused".into());
        assert_eq!(breaker.state(), BreakerState::Closed, "a success in between resets the count");
        assert!(breaker.admit().is_ok());

        breaker.record_connection(false, || "refused".into());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(metrics.ops.db_breaker_state.get(), 1);
        match breaker.admit() {
            Err(DbError::Unavailable(Unavailable::BreakerOpen { retry_after_secs })) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }

        breaker.probe_passed();
        assert_eq!(breaker.state(), BreakerState::Open, "the cooldown is not over yet");

        std::thread::sleep(cooldown * 2);
        breaker.probe_failed("still refused");
        assert_eq!(breaker.state(), BreakerState::Open, "the trial probe failed");
        assert_eq!(transitions(&metrics, BreakerState::HalfOpen), 1);
        assert_eq!(transitions(&metrics, BreakerState::Open), 2);
        breaker.probe_passed();
        assert_eq!(breaker.state(), BreakerState::Open, "a fresh cooldown began with the failed trial");

        std::thread::sleep(cooldown * 2);
        breaker.probe_passed();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(metrics.ops.db_breaker_state.get(), 0);
        assert_eq!(transitions(&metrics, BreakerState::Closed), 1);
        assert!(breaker.admit().is_ok());

        breaker.probe_failed("gone again");
        assert_eq!(breaker.state(), BreakerState::Open, "one failed probe opens a closed breaker");

        // Every transition was announced: open, half-open, open, half-open, closed, open.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while heard.load(Ordering::Acquire) < 6 {
            assert!(std::time::Instant::now() < deadline, "announcements: {}", heard.load(Ordering::Acquire));
            actix_rt::task::yield_now().await;
        }
    }
}
