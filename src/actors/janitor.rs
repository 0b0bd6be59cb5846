//! The Janitor actor: on an interval, prunes idempotency keys past their retention,
//! outbox events past `EVENT_RETENTION_HOURS` (with NATS publishing on, only once published),
//! failed logins past the throttle window, and credential changes past theirs.

use std::{sync::Arc, time::Duration};

use actix::Context;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    db_executor::DbGateway,
    supervision::{guarded_interval, guarded_then, supervised_actor, SupervisedActor, Supervision},
};

pub const ACTOR: &str = super::names::JANITOR;
use crate::db::DbError;
use crate::{
    db::housekeeping::{PruneExpired, Pruned},
    domain::{
        clock,
        user::{CREDENTIAL_CHANGE_WINDOW, LOGIN_FAILURE_WINDOW},
    },
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
    supervision: Supervision,
    metrics: Arc<Metrics>,
    record: Record,
}

impl Janitor {
    pub fn new(db: DbGateway, retention: Retention, supervision: Supervision, metrics: Arc<Metrics>) -> Self {
        Self { db, retention, running: false, supervision, metrics, record: Record::default() }
    }

    fn finish(&mut self, outcome: Result<Pruned, DbError>) {
        self.running = false;
        let now = Utc::now();
        self.record.runs += 1;
        self.record.last_run_at = Some(now);
        match outcome {
            Ok(pruned) => {
                tracing::debug!(?pruned, "expired rows pruned");
                let rows = pruned.idempotency_keys + pruned.events + pruned.login_failures + pruned.credential_changes;
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

    fn state(&self) -> serde_json::Value {
        let record = &self.record;
        let last_pruned = record.last_pruned.as_ref().map(|pruned| {
            json!({"idempotency_keys": pruned.idempotency_keys, "events": pruned.events,
                   "login_failures": pruned.login_failures, "credential_changes": pruned.credential_changes})
        });
        json!({
            "interval_seconds": self.retention.interval.as_secs(), "running": self.running,
            "runs": record.runs, "failures": record.failures,
            "last_run_at": record.last_run_at, "last_success_at": record.last_success_at,
            "last_pruned": last_pruned, "rows_pruned_total": record.rows_pruned_total,
            "last_error": record.last_error,
        })
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
            credential_changes_before: before(CREDENTIAL_CHANGE_WINDOW),
            keep_unpublished_events: self.retention.keep_unpublished_events,
        };
        let db = self.db.clone();
        guarded_then(ctx, async move { db.run(prune).await }, |outcome, act, _| act.finish(outcome));
    }
}

supervised_actor!(Janitor);

/// The record survives a restart: how long the janitor has been failing is exactly what an
/// operator needs to see after one.
impl SupervisedActor for Janitor {
    fn start(&mut self, ctx: &mut Context<Self>) {
        self.running = false;
        guarded_interval(ctx, self.retention.interval, |act, ctx| act.sweep(ctx));
    }

    fn report_state(&mut self) -> serde_json::Value {
        self.state()
    }
}
