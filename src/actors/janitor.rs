//! The Janitor actor: on an interval, prunes idempotency keys past their retention,
//! outbox events past `EVENT_RETENTION_HOURS` (with NATS publishing on, only once published),
//! and failed logins past the throttle window.

use std::{sync::Arc, time::Duration};

use actix::{fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Supervised};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    chaos::crashed,
    db_executor::DbGateway,
    report::{ActorReport, GetActorReport},
    supervision::{guarded, Guarded, PanicPayload, RestartReporter},
    Crash,
};

const ACTOR: &str = "janitor";
use crate::{
    db::housekeeping::{PruneExpired, Pruned},
    domain::{clock, user::LOGIN_FAILURE_WINDOW},
    error::AppError,
    metrics::Metrics,
};

/// What the janitor has done, for the actors API: a janitor that stopped pruning shows
/// an old `last_success_at` and a `last_error`.
#[derive(Debug, Default)]
struct Record {
    runs: u64,
    failures: u64,
    last_run_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    last_pruned: Option<Pruned>,
    rows_pruned_total: u64,
    last_error: Option<String>,
}

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
    metrics: Arc<Metrics>,
    record: Record,
}

impl Janitor {
    pub fn new(db: DbGateway, retention: Retention, reporter: RestartReporter, metrics: Arc<Metrics>) -> Self {
        Self { db, retention, running: false, reporter, metrics, record: Record::default() }
    }

    fn finish(&mut self, outcome: Result<Pruned, AppError>) {
        self.running = false;
        let now = Utc::now();
        self.record.runs += 1;
        self.record.last_run_at = Some(now);
        match outcome {
            Ok(pruned) => {
                tracing::debug!(?pruned, "expired rows pruned");
                let rows = pruned.idempotency_keys + pruned.events + pruned.login_failures;
                self.record.rows_pruned_total += super::report::as_u64(rows);
                self.record.last_pruned = Some(pruned);
                self.record.last_success_at = Some(now);
                self.record.last_error = None;
                self.metrics.ops.janitor_last_success.set(now.timestamp_millis() as f64 / 1000.0);
            }
            Err(error) => {
                tracing::warn!(%error, "pruning failed; will retry next interval");
                self.record.failures += 1;
                self.record.last_error = Some(error.to_string());
            }
        }
    }

    fn report(&self) -> ActorReport {
        let record = &self.record;
        let last_pruned = record.last_pruned.as_ref().map(|pruned| {
            json!({"idempotency_keys": pruned.idempotency_keys, "events": pruned.events,
                   "login_failures": pruned.login_failures})
        });
        ActorReport::running(
            ACTOR,
            json!({
                "interval_seconds": self.retention.interval.as_secs(), "running": self.running,
                "runs": record.runs, "failures": record.failures,
                "last_run_at": record.last_run_at, "last_success_at": record.last_success_at,
                "last_pruned": last_pruned, "rows_pruned_total": record.rows_pruned_total,
                "last_error": record.last_error,
            }),
        )
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
        ctx.spawn(wrap_future(async move { db.run(prune).await }).map(|outcome, act: &mut Self, ctx| {
            guarded(act, ctx, |act, _| act.finish(outcome));
        }));
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            act.running = false;
            ctx.run_interval(act.retention.interval, |act, ctx| {
                guarded(act, ctx, |act, ctx| act.sweep(ctx));
            });
        });
    }
}

impl Guarded for Janitor {
    fn on_panic(&mut self, payload: &PanicPayload) {
        self.reporter.report(ACTOR, payload);
    }
}

impl Supervised for Janitor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // The record survives a restart: how long the janitor has been failing is exactly
        // what an operator needs to see after one.
        guarded(self, ctx, |_, _| tracing::info!(actor = ACTOR, "restarting"));
    }
}

impl Handler<GetActorReport> for Janitor {
    type Result = MessageResult<GetActorReport>;
    fn handle(&mut self, _msg: GetActorReport, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(
            guarded(self, ctx, |act, _| act.report())
                .unwrap_or_else(|| ActorReport::unresponsive(ACTOR, "panicked while reporting")),
        )
    }
}

impl Handler<Crash> for Janitor {
    type Result = Result<(), AppError>;
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, |_, _| msg.detonate()).ok_or_else(|| crashed(ACTOR))
    }
}
