//! One supervision mechanism for every actor. actix never catches panics: a panicking async
//! actor takes its mailbox down for good and a panicking SyncArbiter thread is never
//! replaced. So every piece of an actor's work runs under `catch_panic`; a panic is logged
//! with the actor's name, counted, recorded in the Health actor's ledger, and the actor's
//! context stopped, so the Supervisor (async actors) or the SyncArbiter factory (thread
//! pools) puts a fresh actor behind the same address.
//!
//! An async actor states only what is its own by implementing `SupervisedActor` (what it
//! does when it starts, what a restart keeps, what it reports) and gets the rest from
//! `supervised_actor!`: `Actor`, `Supervised`, `Handler<Crash>` and
//! `Handler<GetActorReport>` (a blanket impl of actix's `Handler` is ruled out by the
//! orphan rules, hence the macro). Its name, in logs, `storefront_actor_restarts_total`,
//! the actors API and `/ops/chaos`, is the one its `Supervision` was made for. Its handlers run their work through `guarded`, its
//! intervals through `guarded_interval`, its futures' continuations through
//! `guarded_then`. A thread-pool actor holds the same `Supervision` and runs its work
//! through `Supervision::catch`.
//!
//! Restarts obey a restart intensity with backoff (`domain::restart_intensity`, history in
//! `restarts`): within `ACTOR_MAX_RESTARTS` per `ACTOR_RESTART_WINDOW_SECONDS` a panicked
//! actor is rebuilt at once; past it, the restart waits. An async actor waiting out its
//! backoff has run `recover` but not `start`, and answers every message at once with the
//! fallback its handler gives for a panic; a pool thread sleeps before its factory builds
//! the next actor. Callers that ask `ActorRestarts::is_down` first do not even send.

use std::{
    any::Any,
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
    time::Duration,
};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Message, Recipient,
    SpawnHandle, Supervised, SyncContext,
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    chaos::Crash,
    failure::ActorFailure,
    report::ActorReport,
    restarts::{ActorRestarts, Restart, RestartRegistry},
};
use crate::metrics::Metrics;

/// What a crash loop injected with `/ops/chaos` panics with.
const CRASH_LOOP: &str = "fault injected: crash loop requested by an operator";

pub type PanicPayload = Box<dyn Any + Send>;

/// Runs `work`, turning a panic into its payload. Actor state touched by a panicking
/// handler is discarded or repaired by the restart that follows (`SupervisedActor::recover`),
/// which is why unwind safety holds.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, PanicPayload> {
    catch_unwind(AssertUnwindSafe(work))
}

/// A supervised actor whose address exists before the actor does, for one that the actors
/// it is built from must already reach: Health keeps the ledger every actor reports its
/// restarts to, and watches the database pool that such actors make up; the shared cache
/// is told by the DbExecutors what they made stale, and loads through them.
pub struct Unstarted<A: Actor<Context = Context<A>>> {
    context: Context<A>,
}

impl<A: Supervised + Actor<Context = Context<A>>> Unstarted<A> {
    pub fn new() -> Self {
        Self { context: Context::new() }
    }

    pub fn with_mailbox_capacity(mut self, capacity: usize) -> Self {
        self.context.set_mailbox_capacity(capacity);
        self
    }

    /// Messages sent here wait in the mailbox until the actor starts.
    pub fn address(&self) -> Addr<A> {
        self.context.address()
    }

    /// What `actix::Supervisor::start` does, for the context made earlier: runs `actor`,
    /// and whenever it stops while anyone still holds its address, restarts it (its
    /// `restarting`, then `started` again).
    pub fn start(self, actor: A) -> Addr<A> {
        let address = self.context.address();
        let mut running = self.context.into_future(actor);
        actix::spawn(async move {
            loop {
                (&mut running).await;
                if !running.restart() {
                    break;
                }
            }
        });
        address
    }
}

impl<A: Supervised + Actor<Context = Context<A>>> Default for Unstarted<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// One restart, as recorded in the Health actor's ledger.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ActorRestarted {
    pub actor: &'static str,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// Where restarts are counted, recorded and decided: cloned into whatever starts actors,
/// which hands each actor its `Supervision`.
#[derive(Clone)]
pub struct RestartReporter {
    metrics: Arc<Metrics>,
    ledger: Recipient<ActorRestarted>,
    registry: RestartRegistry,
}

impl RestartReporter {
    pub fn new(metrics: Arc<Metrics>, ledger: Recipient<ActorRestarted>, registry: RestartRegistry) -> Self {
        // Every actor's series exists from start-up, at zero, before its first restart.
        for actor in registry.iter() {
            metrics.actor_restarts.with_label_values(&[actor.name()]);
            metrics.actor_backing_off.with_label_values(&[actor.name()]);
        }
        Self { metrics, ledger, registry }
    }

    /// The supervision of one instance of the actor called `actor`.
    pub fn supervision(&self, actor: &'static str) -> Supervision {
        Supervision { restarts: self.registry.of(actor), reporter: self.clone(), delayed: false, waiting: false }
    }

    /// The restart history of the actor called `actor`, for its callers.
    pub fn restarts_of(&self, actor: &'static str) -> Arc<ActorRestarts> {
        self.registry.of(actor)
    }
}

/// What every supervised actor instance holds: its kind's restart history and where its
/// panics are reported, and whether this instance waits out a backoff.
pub struct Supervision {
    restarts: Arc<ActorRestarts>,
    reporter: RestartReporter,
    /// The last panic's restart waits out a backoff.
    delayed: bool,
    /// Restarted, waiting out the backoff before it starts (async actors).
    waiting: bool,
}

impl Supervision {
    pub fn actor(&self) -> &'static str {
        self.restarts.name()
    }

    pub fn registry(&self) -> &RestartRegistry {
        &self.reporter.registry
    }

    /// Logs and counts a panic and decides when its restart happens; returns the ledger
    /// entry for it.
    fn panicked(&mut self, payload: &PanicPayload) -> ActorRestarted {
        let actor = self.actor();
        let reason = panic_message(payload);
        self.reporter.metrics.actor_restarts.with_label_values(&[actor]).inc();
        match self.restarts.record() {
            Restart::Now => tracing::error!(actor, reason = %reason, "actor panicked; a fresh one takes its place"),
            Restart::After(delay) => {
                self.delayed = true;
                tracing::error!(
                    actor, reason = %reason, backoff_ms = delay.as_millis() as u64,
                    "actor panicked and restarts too often: a fresh one takes its place after a backoff"
                );
            }
        }
        ActorRestarted { actor, at: Utc::now(), reason }
    }

    /// What the caller of a panicked actor is answered with (a 500 problem), or of one
    /// waiting out its backoff (a 503 with `Retry-After`).
    pub fn failure(&self) -> ActorFailure {
        let actor = self.actor();
        if self.waiting {
            ActorFailure::BackingOff { actor, retry_after_secs: self.restarts.retry_after_secs() }
        } else {
            ActorFailure::Panicked { actor }
        }
    }

    /// Runs a thread-pool actor's work under the panic guard. A panic is reported and the
    /// thread's actor stopped, so the SyncArbiter's factory builds a fresh one on the same
    /// thread (after a backoff, see `wait_before_restart`); the caller gets the 500 it is
    /// answered with.
    pub fn catch<A, T, E>(&mut self, ctx: &mut SyncContext<A>, work: impl FnOnce() -> T) -> Result<T, E>
    where
        A: Actor<Context = SyncContext<A>>,
        E: From<ActorFailure>,
    {
        let crash_looping = self.restarts.crash_looping();
        catch_panic(|| {
            assert!(!crash_looping, "{CRASH_LOOP}");
            work()
        })
        .map_err(|payload| {
            let restart = self.panicked(&payload);
            self.reporter.ledger.do_send(restart);
            ctx.stop();
            self.failure().into()
        })
    }

    /// Call from a pool actor's `stopped`: when its panic's restart backs off, the thread
    /// (the actor's own) sleeps until it is due, so the factory builds the next actor then.
    /// The caller was answered before; new requests see the pool short of a thread.
    pub fn wait_before_restart(&mut self) {
        if !std::mem::take(&mut self.delayed) {
            return;
        }
        loop {
            // Another thread of the pool may have pushed the restart later meanwhile.
            let left = self.restarts.until_restart();
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left);
        }
        tracing::info!(actor = self.actor(), "backoff over: restarting");
    }
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

/// How the mechanism reaches an actor's `Supervision` (its `supervision` field); implemented
/// by `supervised_actor!`.
pub trait HasSupervision {
    fn supervision(&mut self) -> &mut Supervision;
}

/// An async actor under supervision: what is its own. `supervised_actor!` implements the
/// rest on top of it.
pub trait SupervisedActor: Actor<Context = Context<Self>> + HasSupervision {
    /// What the actor does when it starts, and again after every restart (intervals, a
    /// first poll). Whatever it spawned before a restart went with the old context.
    fn start(&mut self, _ctx: &mut Context<Self>) {}

    /// Runs right after a panic, before the actor starts again: the struct survives a
    /// restart, so here it forgets what the panic may have left half-written and keeps the
    /// rest. It does not run under the guard's stop: a panic here is counted and the actor
    /// starts with what it has (stopping again would only repeat it).
    fn recover(&mut self, _ctx: &mut Context<Self>) {}

    /// What the actor says about its own work in `GET /api/v1/ops/actors`.
    fn report_state(&mut self) -> Value;

    /// Records a restart in the ledger (the Health actor's); Health, which keeps the
    /// ledger, records its own.
    fn record_restart(&mut self, restart: ActorRestarted) {
        self.supervision().reporter.ledger.do_send(restart);
    }
}

/// Runs a piece of an async actor's work under `catch_panic`. On a panic the panic is
/// reported and the context stopped, so the Supervisor starts the actor afresh; the
/// caller gets `None` and answers with its fallback. While the actor waits out a backoff
/// the work does not run: `None` at once.
pub fn guarded<A: SupervisedActor, T>(
    act: &mut A,
    ctx: &mut Context<A>,
    work: impl FnOnce(&mut A, &mut Context<A>) -> T,
) -> Option<T> {
    let supervision = act.supervision();
    if supervision.waiting {
        return None;
    }
    let crash_looping = supervision.restarts.crash_looping();
    match catch_panic(|| {
        assert!(!crash_looping, "{CRASH_LOOP}");
        work(act, ctx)
    }) {
        Ok(value) => Some(value),
        Err(payload) => {
            let restart = act.supervision().panicked(&payload);
            act.record_restart(restart);
            ctx.stop();
            None
        }
    }
}

/// `ctx.run_interval` with every tick under `guarded`.
pub fn guarded_interval<A: SupervisedActor>(
    ctx: &mut Context<A>,
    interval: Duration,
    mut tick: impl FnMut(&mut A, &mut Context<A>) + 'static,
) -> SpawnHandle {
    ctx.run_interval(interval, move |act, ctx| {
        guarded(act, ctx, |act, ctx| tick(act, ctx));
    })
}

/// Spawns `future` on the actor's context and runs `then` with its output under `guarded`.
pub fn guarded_then<A: SupervisedActor, F: Future + 'static>(
    ctx: &mut Context<A>,
    future: F,
    then: impl FnOnce(F::Output, &mut A, &mut Context<A>) + 'static,
) -> SpawnHandle {
    ctx.spawn(wrap_future(future).map(move |output, act: &mut A, ctx: &mut Context<A>| {
        guarded(act, ctx, |act, ctx| then(output, act, ctx));
    }))
}

/// `Actor::started` of a supervised actor (see `supervised_actor!`): `start` at once, or
/// once the backoff is over.
pub fn started<A: SupervisedActor>(act: &mut A, ctx: &mut Context<A>) {
    if !act.supervision().waiting {
        guarded(act, ctx, |act, ctx| act.start(ctx));
        return;
    }
    // Another instance of the actor may have pushed the restart later meanwhile.
    let left = act.supervision().restarts.until_restart();
    if left.is_zero() {
        act.supervision().waiting = false;
        tracing::info!(actor = act.supervision().actor(), "backoff over: restarting");
        guarded(act, ctx, |act, ctx| act.start(ctx));
    } else {
        ctx.run_later(left, started);
    }
}

/// `Supervised::restarting` of a supervised actor (see `supervised_actor!`): `recover`
/// at once, then wait out the backoff if the panic's restart is delayed.
pub fn restarting<A: SupervisedActor>(act: &mut A, ctx: &mut Context<A>) {
    tracing::info!(actor = act.supervision().actor(), "restarting");
    if let Err(payload) = catch_panic(|| act.recover(ctx)) {
        let restart = act.supervision().panicked(&payload);
        act.record_restart(restart);
    }
    let supervision = act.supervision();
    supervision.waiting = std::mem::take(&mut supervision.delayed);
}

/// Answers `Crash`: the actor panics in its handler, and its caller gets the 500 (a 503
/// while the actor waits out a backoff: it runs nothing then).
pub fn crash<A: SupervisedActor>(act: &mut A, ctx: &mut Context<A>, crash: Crash) -> Result<(), ActorFailure> {
    guarded(act, ctx, |_, _| crash.detonate()).ok_or_else(|| act.supervision().failure())
}

/// Answers `GetActorReport` from the actor's memory.
pub fn report<A: SupervisedActor>(act: &mut A, ctx: &mut Context<A>) -> ActorReport {
    let name = act.supervision().actor();
    guarded(act, ctx, |act, _| ActorReport::running(name, act.report_state())).unwrap_or_else(|| {
        let why =
            if act.supervision().waiting { "waiting out its restart backoff" } else { "panicked while reporting" };
        ActorReport::unresponsive(name, why)
    })
}

/// Implements `Actor` (with `Context`), `Supervised`, `Handler<Crash>`,
/// `Handler<GetActorReport>` and `HasSupervision` (its `supervision` field) for a
/// `SupervisedActor`.
macro_rules! supervised_actor {
    ($actor:ty) => {
        impl $crate::actors::supervision::HasSupervision for $actor {
            fn supervision(&mut self) -> &mut $crate::actors::supervision::Supervision {
                &mut self.supervision
            }
        }

        impl actix::Actor for $actor {
            type Context = actix::Context<Self>;

            fn started(&mut self, ctx: &mut Self::Context) {
                $crate::actors::supervision::started(self, ctx);
            }
        }

        impl actix::Supervised for $actor {
            fn restarting(&mut self, ctx: &mut Self::Context) {
                $crate::actors::supervision::restarting(self, ctx);
            }
        }

        impl actix::Handler<$crate::actors::chaos::Crash> for $actor {
            type Result = Result<(), $crate::actors::failure::ActorFailure>;

            fn handle(&mut self, msg: $crate::actors::chaos::Crash, ctx: &mut Self::Context) -> Self::Result {
                $crate::actors::supervision::crash(self, ctx, msg)
            }
        }

        impl actix::Handler<$crate::actors::report::GetActorReport> for $actor {
            type Result = actix::MessageResult<$crate::actors::report::GetActorReport>;

            fn handle(
                &mut self,
                _msg: $crate::actors::report::GetActorReport,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                actix::MessageResult($crate::actors::supervision::report(self, ctx))
            }
        }
    };
}
pub(crate) use supervised_actor;
