//! What an actor says about itself in `GET /api/v1/ops/actors`: one `ActorReport` per
//! actor kind. Async actors answer `GetActorReport` from their own state; pools of
//! threads are described from the outside (their atomics), since asking them would wait
//! in their queue. Restart counts and supervision are filled in by the directory, from the
//! metrics, the Health actor's ledger and each actor's restart history, so an actor never
//! has to count its own deaths.

use actix::Message;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// One supervised actor on an arbiter, rebuilt by its Supervisor after a panic.
    Async,
    /// Threads on a SyncArbiter, each rebuilt by its factory after a panic.
    SyncPool,
    /// Not an actor but a guard the operator wants on the same page (the database breaker).
    Breaker,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Instances {
    pub configured: u64,
    pub alive: u64,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct QueueReport {
    /// Requests admitted: waiting or running.
    pub in_flight: u64,
    /// Most requests admitted at once; the next is shed with 503.
    pub capacity: u64,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RestartSummary {
    pub count: u64,
    pub last_at: Option<DateTime<Utc>>,
    pub last_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SupervisionState {
    /// Restarted at once after a panic, within the restart intensity.
    Running,
    /// Restarted too often: each restart waits out a backoff, until the actor has run a
    /// whole window since its last restart without a panic.
    BackingOff,
}

/// How the actor's restarts are supervised: at most `max_restarts` at once within
/// `window_seconds`; past that it backs off, each restart delayed (1 s doubling to 30 s,
/// jittered), until it has run a whole window since its last restart without a panic.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SupervisionReport {
    pub state: SupervisionState,
    /// Restarts within the last `window_seconds`.
    pub restarts_in_window: u32,
    /// `ACTOR_MAX_RESTARTS`: restarts within the window that happen at once.
    pub max_restarts: u32,
    /// `ACTOR_RESTART_WINDOW_SECONDS`.
    pub window_seconds: u64,
    /// When a restart that is waiting out its backoff happens; null when none waits.
    pub next_restart_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActorReport {
    /// The name used in logs, `storefront_actor_restarts_total{actor}` and `/ops/chaos`.
    pub name: String,
    pub kind: ActorKind,
    pub instances: Instances,
    pub queue: Option<QueueReport>,
    pub restarts: RestartSummary,
    /// Null for what is not an actor (the database breaker).
    pub supervision: Option<SupervisionReport>,
    /// What the actor knows about its own work (entries, last run, lag, ...).
    #[schema(value_type = Object)]
    pub state: Value,
}

impl ActorReport {
    /// An async actor that answered: one configured, one alive.
    pub fn running(name: &str, state: Value) -> Self {
        Self::new(name, ActorKind::Async, Instances { configured: 1, alive: 1 }, state)
    }

    pub fn new(name: &str, kind: ActorKind, instances: Instances, state: Value) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            instances,
            queue: None,
            restarts: RestartSummary::default(),
            supervision: None,
            state,
        }
    }

    pub fn with_queue(mut self, in_flight: usize, capacity: usize) -> Self {
        self.queue = Some(QueueReport { in_flight: as_u64(in_flight), capacity: as_u64(capacity) });
        self
    }

    /// An async actor that did not answer in time (or panicked while answering).
    pub fn unresponsive(name: &str, why: &str) -> Self {
        Self::new(name, ActorKind::Async, Instances { configured: 1, alive: 0 }, serde_json::json!({"error": why}))
    }

    /// An actor this configuration does not run (e.g. the cache with CACHE_CAPACITY=0).
    pub fn disabled(name: &str, kind: ActorKind, why: &str) -> Self {
        Self::new(name, kind, Instances { configured: 0, alive: 0 }, serde_json::json!({"disabled": why}))
    }
}

pub fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Asks an async actor for its report; it answers from memory, under its panic guard.
#[derive(Debug, Message)]
#[rtype(result = "ActorReport")]
pub struct GetActorReport;
