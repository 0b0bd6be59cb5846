//! The Health actor owns readiness: the last database probe, whether shutdown has begun,
//! and the ledger of actor restarts. `/readyz` asks it and never waits on the database.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use actix::{
    fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, Supervised,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{
    chaos::crashed,
    db_executor::{DbGateway, Ping},
    supervision::{guarded, record_panic, ActorRestarted, Guarded, PanicPayload},
    Crash,
};
use crate::metrics::Metrics;

const ACTOR: &str = "health";

#[derive(Debug, Clone)]
enum Probe {
    Pending,
    Passed { at: DateTime<Utc>, latency: Duration },
    Failed { at: DateTime<Utc> },
}

#[derive(Debug, Clone, Default)]
struct RestartRecord {
    count: u64,
    last_at: Option<DateTime<Utc>>,
    last_reason: String,
}

pub struct Health {
    metrics: Arc<Metrics>,
    probe_interval: Duration,
    database: Option<DbGateway>,
    probe: Probe,
    probe_in_flight: bool,
    shutting_down: bool,
    restarts: BTreeMap<&'static str, RestartRecord>,
    /// Dependencies that are reported, not probed, and do not decide readiness (NATS).
    dependencies: BTreeMap<&'static str, DependencyCheck>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>, probe_interval: Duration) -> Self {
        Self {
            metrics,
            probe_interval,
            database: None,
            probe: Probe::Pending,
            probe_in_flight: false,
            shutting_down: false,
            restarts: BTreeMap::new(),
            dependencies: BTreeMap::new(),
        }
    }

    fn probe_database(&mut self, ctx: &mut Context<Self>) {
        let Some(database) = self.database.clone() else {
            return;
        };
        // A saturated pool is busy, not down: keep the last verdict rather than being shed.
        if self.probe_in_flight || database.is_saturated() {
            return;
        }
        self.probe_in_flight = true;
        let started = std::time::Instant::now();
        ctx.spawn(wrap_future(async move { database.run(Ping).await }).map(move |outcome, act: &mut Self, ctx| {
            guarded(act, ctx, |act, _| act.record_probe(outcome.is_ok(), started.elapsed()));
        }));
    }

    fn record_probe(&mut self, passed: bool, latency: Duration) {
        self.probe_in_flight = false;
        let at = Utc::now();
        let was_passing = matches!(self.probe, Probe::Passed { .. });
        self.probe = if passed { Probe::Passed { at, latency } } else { Probe::Failed { at } };
        if passed != was_passing {
            tracing::info!(passed, "database readiness changed");
        }
    }

    fn report(&self) -> ReadinessReport {
        let workers_alive = self.metrics.db_workers_alive.get();
        let workers_wanted = self.database.as_ref().map_or(0, |db| db.workers() as i64);
        let mut checks = serde_json::Map::new();

        let database_ok = matches!(self.probe, Probe::Passed { .. });
        checks.insert(
            "database:responseTime".into(),
            json!([match &self.probe {
                Probe::Pending => json!({"status": "fail", "output": "not probed yet"}),
                Probe::Passed { at, latency } => json!({
                    "status": "pass", "observedValue": latency.as_secs_f64() * 1000.0,
                    "observedUnit": "ms", "time": rfc3339(at),
                }),
                Probe::Failed { at } =>
                    json!({"status": "fail", "output": "database unreachable", "time": rfc3339(at)}),
            }]),
        );

        let workers_ok = workers_alive >= workers_wanted;
        checks.insert(
            "db_executor:workers".into(),
            json!([{"status": pass_fail(workers_ok), "observedValue": workers_alive, "targetValue": workers_wanted}]),
        );
        checks.insert("process:shutdown".into(), json!([{"status": pass_fail(!self.shutting_down)}]));

        let restarts: Vec<Value> = self
            .restarts
            .iter()
            .map(|(actor, record)| {
                json!({
                    "componentId": actor, "status": "pass", "observedValue": record.count,
                    "time": record.last_at.as_ref().map(rfc3339), "output": record.last_reason,
                })
            })
            .collect();
        if !restarts.is_empty() {
            checks.insert("actors:restarts".into(), Value::Array(restarts));
        }

        for (name, check) in &self.dependencies {
            checks.insert(
                (*name).into(),
                json!([{"status": pass_fail(check.passing), "output": check.output, "time": rfc3339(&check.since)}]),
            );
            self.metrics.readiness.with_label_values(&[name]).set(i64::from(check.passing));
        }

        for (name, ok) in [("database", database_ok), ("db_executor", workers_ok), ("shutdown", !self.shutting_down)] {
            self.metrics.readiness.with_label_values(&[name]).set(i64::from(ok));
        }
        ReadinessReport { ready: database_ok && workers_ok && !self.shutting_down, checks: Value::Object(checks) }
    }

    fn record_restart(&mut self, restart: ActorRestarted) {
        let record = self.restarts.entry(restart.actor).or_default();
        record.count += 1;
        record.last_at = Some(restart.at);
        record.last_reason = restart.reason;
    }
}

fn pass_fail(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "fail"
    }
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Actor for Health {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Runs again after a restart; the database, ledger and shutdown flag survive it.
        self.probe_in_flight = false;
        self.probe_database(ctx);
        ctx.run_interval(self.probe_interval, |act, ctx| {
            guarded(act, ctx, |act, ctx| act.probe_database(ctx));
        });
    }
}

impl Guarded for Health {
    fn on_panic(&mut self, payload: &PanicPayload) {
        // Health keeps its own ledger, so its own restarts are recorded right here.
        let restart = record_panic(&self.metrics, ACTOR, payload);
        self.record_restart(restart);
    }
}

impl Supervised for Health {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(actor = ACTOR, "restarting");
    }
}

/// Hands Health the database to probe (it is built after Health, which it reports to).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchDatabase(pub DbGateway);

impl Handler<WatchDatabase> for Health {
    type Result = ();
    fn handle(&mut self, msg: WatchDatabase, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| {
            act.database = Some(msg.0);
            act.probe_database(ctx);
        });
    }
}

impl Handler<ActorRestarted> for Health {
    type Result = ();
    fn handle(&mut self, msg: ActorRestarted, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| act.record_restart(msg));
    }
}

/// How a dependency off the request path stands, from the actor that uses it; shown in
/// `/readyz` under `name` without deciding readiness.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct DependencyCheck {
    pub name: &'static str,
    pub passing: bool,
    pub output: String,
    /// Since when it stands so.
    pub since: DateTime<Utc>,
}

impl Handler<DependencyCheck> for Health {
    type Result = ();
    fn handle(&mut self, msg: DependencyCheck, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.dependencies.insert(msg.name, msg);
        });
    }
}

/// Shutdown has begun: readiness fails from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BeginShutdown;

impl Handler<BeginShutdown> for Health {
    type Result = ();
    fn handle(&mut self, _msg: BeginShutdown, ctx: &mut Context<Self>) {
        // Plain assignments cannot panic; the flag must be set whatever else happens.
        self.shutting_down = true;
        guarded(self, ctx, |_, _| tracing::info!("shutdown begun; readiness now fails"));
    }
}

pub struct ReadinessReport {
    pub ready: bool,
    pub checks: Value,
}

#[derive(Message)]
#[rtype(result = "ReadinessReport")]
pub struct GetReadiness;

impl Handler<GetReadiness> for Health {
    type Result = MessageResult<GetReadiness>;
    fn handle(&mut self, _msg: GetReadiness, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(guarded(self, ctx, |act, _| act.report()).unwrap_or_else(|| ReadinessReport {
            ready: false,
            checks: json!({"health:actor": [{"status": "fail", "output": "restarting"}]}),
        }))
    }
}

impl Handler<Crash> for Health {
    type Result = Result<(), crate::error::AppError>;
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, |_, _| msg.detonate()).ok_or_else(|| crashed(ACTOR))
    }
}
