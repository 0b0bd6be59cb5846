//! What makes a panic survivable. actix never catches panics: a panicking async actor
//! takes its mailbox down for good and a panicking SyncArbiter thread is never replaced.
//! So every actor handler runs its work under `catch_panic`; on a panic it reports here
//! and calls `ctx.stop()`, and the Supervisor (async actors) or the SyncArbiter factory
//! (DbExecutor) puts a fresh actor behind the same address.

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

use actix::{Actor, ActorContext, Context, Message, Recipient};
use chrono::{DateTime, Utc};

use crate::{error::AppError, metrics::Metrics};

pub type PanicPayload = Box<dyn Any + Send>;

/// Runs `work`, turning a panic into its payload. Actor state touched by a panicking
/// handler is discarded by the restart that follows, which is why unwind safety holds.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, PanicPayload> {
    catch_unwind(AssertUnwindSafe(work))
}

/// One restart, as recorded in the Health actor's ledger.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ActorRestarted {
    pub actor: &'static str,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// Logs, counts and records a restart. Cloned into every supervised actor.
#[derive(Clone)]
pub struct RestartReporter {
    metrics: Arc<Metrics>,
    ledger: Recipient<ActorRestarted>,
}

impl RestartReporter {
    pub fn new(metrics: Arc<Metrics>, ledger: Recipient<ActorRestarted>) -> Self {
        Self { metrics, ledger }
    }

    /// Records the panic and returns the error the caller is answered with.
    pub fn report(&self, actor: &'static str, payload: &PanicPayload) -> AppError {
        let restart = record_panic(&self.metrics, actor, payload);
        self.ledger.do_send(restart);
        AppError::Internal(format!("actor {actor} panicked"))
    }
}

/// Logs and counts a panic; returns the ledger entry for it.
pub fn record_panic(metrics: &Metrics, actor: &'static str, payload: &PanicPayload) -> ActorRestarted {
    let reason = panic_message(payload);
    tracing::error!(actor, reason = %reason, "actor panicked; a fresh one takes its place");
    metrics.actor_restarts.with_label_values(&[actor]).inc();
    ActorRestarted { actor, at: Utc::now(), reason }
}

fn panic_message(payload: &PanicPayload) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// An async actor that can be told it panicked (to log, count and record it).
pub trait Guarded: Actor<Context = Context<Self>> {
    fn on_panic(&mut self, payload: &PanicPayload);
}

/// Runs a piece of an async actor's work under `catch_panic`. On a panic the actor is told,
/// and its context stopped so the Supervisor builds it afresh; the caller gets `None`.
pub fn guarded<A: Guarded, T>(
    act: &mut A,
    ctx: &mut Context<A>,
    work: impl FnOnce(&mut A, &mut Context<A>) -> T,
) -> Option<T> {
    match catch_panic(|| work(act, ctx)) {
        Ok(value) => Some(value),
        Err(payload) => {
            act.on_panic(&payload);
            ctx.stop();
            None
        }
    }
}
