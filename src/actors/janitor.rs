//! The Janitor actor: on an interval, prunes idempotency keys past their retention,
//! outbox events past `EVENT_RETENTION_HOURS` (with NATS publishing on, only once published),
//! and failed logins past the throttle window.

use std::time::Duration;

use actix::{fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Supervised};

use super::{
    db_executor::DbGateway,
    supervision::{guarded, Guarded, PanicPayload, RestartReporter},
};

const ACTOR: &str = "janitor";
use crate::{
    db::housekeeping::PruneExpired,
    domain::{clock, user::LOGIN_FAILURE_WINDOW},
};

pub struct Retention {
    pub idempotency_keys: Duration,
    pub events: Duration,
    pub interval: Duration,
    /// NATS publishing is on: outbox events are pruned only once published.
    pub keep_unpublished_events: bool,
}

pub struct Janitor {
    db: DbGateway,
    retention: Retention,
    running: bool,
    reporter: RestartReporter,
}

impl Janitor {
    pub fn new(db: DbGateway, retention: Retention, reporter: RestartReporter) -> Self {
        Self { db, retention, running: false, reporter }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let now = clock::now();
        let before = |age: Duration| now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let prune = PruneExpired {
            idempotency_keys_before: before(self.retention.idempotency_keys),
            events_before: before(self.retention.events),
            login_failures_before: before(LOGIN_FAILURE_WINDOW),
            keep_unpublished_events: self.retention.keep_unpublished_events,
        };
        let db = self.db.clone();
        ctx.spawn(wrap_future(async move { db.run(prune).await }).map(|outcome, act: &mut Self, _| {
            act.running = false;
            match outcome {
                Ok(pruned) => tracing::debug!(?pruned, "expired rows pruned"),
                Err(error) => tracing::warn!(%error, "pruning failed; will retry next interval"),
            }
        }));
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.running = false;
        ctx.run_interval(self.retention.interval, |act, ctx| {
            guarded(act, ctx, |act, ctx| act.sweep(ctx));
        });
    }
}

impl Guarded for Janitor {
    fn on_panic(&mut self, payload: &PanicPayload) {
        self.reporter.report(ACTOR, payload);
    }
}

impl Supervised for Janitor {}
