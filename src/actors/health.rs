//! The Health actor owns readiness: the last database probe, whether shutdown has begun,
//! whether an actor requests cannot do without is backing off, and the ledger of actor
//! restarts. `/readyz` asks it and never waits on the database. It is also where operators'
//! live events come from: each restart, each actor that starts or stops backing off, and
//! each change of readiness goes to the EventHub's `ops` topic.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use actix::{Addr, Context, Handler, Message, MessageResult, Recipient};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{
    breaker::{BreakerChanged, BreakerState},
    db_executor::{self, DbGateway, Ping},
    db_probe::{self, DbProbe, ProbeDatabase},
    event_hub::OpsEvent,
    report::{RestartSummary, SupervisionReport},
    restarts::ActorRestarts,
    supervision::{
        guarded, guarded_interval, guarded_then, supervised_actor, ActorRestarted, SupervisedActor, Supervision,
    },
};
use crate::metrics::Metrics;

pub const ACTOR: &str = super::names::HEALTH;
/// Restarts kept for `GET /api/v1/ops/restarts`.
const LEDGER_LENGTH: usize = 100;
/// Actors without which requests cannot be served: readiness fails while one backs off.
const CORE_ACTORS: [&str; 2] = [db_executor::ACTOR, ACTOR];

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
    supervision: Supervision,
    probe_interval: Duration,
    database: DbGateway,
    probe: Probe,
    probe_in_flight: bool,
    shutting_down: bool,
    restarts: BTreeMap<&'static str, RestartRecord>,
    /// Where `ops` events go (the EventHub's topic).
    ops: Recipient<OpsEvent>,
    /// Readiness as last announced on `ops`.
    announced_ready: Option<bool>,
    /// The probe's own thread and connection (so probes never queue behind requests), and
    /// how long a probe may take before it counts as failed (and opens the breaker).
    probe_thread: DedicatedProbe,
    /// The most recent restarts, newest at the back.
    ledger: VecDeque<ActorRestarted>,
    last_breaker_change: Option<BreakerChanged>,
    /// Dependencies that are reported, not probed, and do not decide readiness (NATS).
    dependencies: BTreeMap<&'static str, DependencyCheck>,
    /// Actors announced on `ops` as backing off, with the delayed restart announced.
    announced_backoffs: BTreeMap<&'static str, u64>,
}

impl Health {
    /// `supervision` reports to this Health itself (it keeps the ledger).
    pub fn new(metrics: Arc<Metrics>, probe_interval: Duration, supervision: Supervision, watched: Watched) -> Self {
        let Watched { database, probe_thread, ops } = watched;
        Self {
            metrics,
            supervision,
            probe_interval,
            database,
            probe: Probe::Pending,
            probe_in_flight: false,
            shutting_down: false,
            restarts: BTreeMap::new(),
            ops,
            announced_ready: None,
            probe_thread,
            ledger: VecDeque::with_capacity(LEDGER_LENGTH),
            last_breaker_change: None,
            dependencies: BTreeMap::new(),
            announced_backoffs: BTreeMap::new(),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        self.probe_database(ctx);
        if self.watch_backoffs() {
            self.announce_readiness();
        }
    }

    /// Announces on `ops` every actor that started backing off or was delayed again
    /// (`actor.backing_off`) and every one that recovered (`actor.recovered`), and keeps
    /// `storefront_actor_backing_off` current. Runs on every tick and after every restart
    /// report, so a recovery is announced within a probe interval. True when anything
    /// changed.
    fn watch_backoffs(&mut self) -> bool {
        let registry = self.supervision.registry().clone();
        let mut changed = false;
        for restarts in registry.iter() {
            let (actor, backing_off, mark) = (restarts.name(), restarts.is_backing_off(), restarts.backoff_mark());
            self.metrics.actor_backing_off.with_label_values(&[actor]).set(i64::from(backing_off));
            let announced = self.announced_backoffs.get(actor).copied();
            if backing_off && announced != Some(mark) {
                let report = restarts.report();
                tracing::warn!(actor, next_restart_at = ?report.next_restart_at, "actor restarts too often: backing off");
                self.announced_backoffs.insert(actor, mark);
                self.emit("actor.backing_off", supervision_event(actor, report));
                changed = true;
            } else if !backing_off && announced.is_some() {
                tracing::info!(actor, "actor recovered: it ran a whole window without a panic");
                self.announced_backoffs.remove(actor);
                self.emit("actor.recovered", supervision_event(actor, restarts.report()));
                changed = true;
            }
        }
        changed
    }

    /// The thread the probe runs on, unless it is down waiting out a restart backoff (then
    /// the probe goes through the pool, as when there is none).
    fn probe_thread(&self) -> Option<DedicatedProbe> {
        let down = self.supervision.registry().find(db_probe::ACTOR).is_some_and(|probe| probe.is_down());
        (!down).then(|| self.probe_thread.clone())
    }

    fn probe_database(&mut self, ctx: &mut Context<Self>) {
        let database = self.database.clone();
        if self.probe_in_flight {
            return;
        }
        if let Some(DedicatedProbe { probe, timeout }) = self.probe_thread() {
            self.probe_in_flight = true;
            // A probe that times out counts as failed; its message is skipped when the
            // probe thread reaches it, so probes never pile up.
            guarded_then(
                ctx,
                async move { probe.send(ProbeDatabase).timeout(timeout).await },
                move |outcome, act, _| {
                    let outcome = outcome
                        .unwrap_or_else(|error| Err(format!("probe did not answer within {timeout:?}: {error}")));
                    act.record_probe_outcome(outcome);
                },
            );
            return;
        }
        // Through the pool: a saturated pool is busy, not down; keep the last verdict
        // rather than being shed.
        if database.is_saturated() {
            return;
        }
        self.probe_in_flight = true;
        let started = std::time::Instant::now();
        guarded_then(ctx, async move { database.run(Ping).await }, move |outcome, act, _| {
            act.record_probe(outcome.is_ok(), started.elapsed());
        });
    }

    /// A probe on the probe thread: its verdict also drives the database breaker.
    fn record_probe_outcome(&mut self, outcome: Result<Duration, String>) {
        match &outcome {
            Ok(_) => self.database.breaker().probe_passed(),
            Err(error) => self.database.breaker().probe_failed(error),
        }
        match outcome {
            Ok(latency) => self.record_probe(true, latency),
            Err(error) => {
                if matches!(self.probe, Probe::Passed { .. }) {
                    tracing::warn!(%error, "database probe failed");
                }
                self.record_probe(false, Duration::ZERO);
            }
        }
    }

    fn record_probe(&mut self, passed: bool, latency: Duration) {
        self.probe_in_flight = false;
        let at = Utc::now();
        let was_passing = matches!(self.probe, Probe::Passed { .. });
        self.probe = if passed { Probe::Passed { at, latency } } else { Probe::Failed { at } };
        if passed != was_passing {
            tracing::info!(passed, "database readiness changed");
        }
        self.announce_readiness();
    }

    /// Tells `ops` subscribers when readiness flips (database down or up, shutting down).
    fn announce_readiness(&mut self) {
        let report = self.report();
        if self.announced_ready == Some(report.ready) {
            return;
        }
        self.announced_ready = Some(report.ready);
        self.emit("health.changed", json!({"ready": report.ready, "checks": report.checks}));
    }

    fn emit(&self, kind: &'static str, data: Value) {
        self.ops.do_send(OpsEvent { kind, data });
    }

    fn report(&self) -> ReadinessReport {
        let workers_alive = self.metrics.db_workers_alive.get();
        let workers_wanted = self.database.workers() as i64;
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
        let breaker_ok = self.insert_breaker_check(&mut checks);
        let supervision_ok = self.insert_supervision_check(&mut checks);

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

        for (name, ok) in [
            ("database", database_ok),
            (db_executor::ACTOR, workers_ok),
            ("shutdown", !self.shutting_down),
            ("breaker", breaker_ok),
            ("supervision", supervision_ok),
        ] {
            self.metrics.readiness.with_label_values(&[name]).set(i64::from(ok));
        }
        ReadinessReport {
            ready: database_ok && workers_ok && !self.shutting_down && breaker_ok && supervision_ok,
            checks: Value::Object(checks),
        }
    }

    /// `actors:supervision`, present while an actor backs off: fail for one requests cannot
    /// do without (`CORE_ACTORS`), warn for the others. Returns whether readiness may pass.
    fn insert_supervision_check(&self, checks: &mut serde_json::Map<String, Value>) -> bool {
        let backing_off: Vec<&std::sync::Arc<ActorRestarts>> =
            self.supervision.registry().iter().filter(|restarts| restarts.is_backing_off()).collect();
        let core_backing_off = backing_off.iter().any(|restarts| CORE_ACTORS.contains(&restarts.name()));
        if !backing_off.is_empty() {
            let components = backing_off.iter().map(|restarts| {
                let report = restarts.report();
                let output = match report.next_restart_at {
                    Some(at) => format!("restarts too often: next restart at {}", rfc3339(&at)),
                    None => format!(
                        "restarted after backing off: recovers once it runs {} s without a panic",
                        report.window_seconds
                    ),
                };
                let status = if CORE_ACTORS.contains(&restarts.name()) { "fail" } else { "warn" };
                json!({
                    "componentId": restarts.name(), "status": status, "observedValue": report.restarts_in_window,
                    "observedUnit": "restarts in window", "output": output,
                })
            });
            checks.insert("actors:supervision".into(), Value::Array(components.collect()));
        }
        !core_backing_off
    }

    /// `database:breaker`: pass closed, warn half-open (a trial is deciding), fail open.
    /// Returns whether readiness may pass.
    fn insert_breaker_check(&self, checks: &mut serde_json::Map<String, Value>) -> bool {
        let state = self.database.breaker().state();
        let status = match state {
            BreakerState::Closed => "pass",
            BreakerState::HalfOpen => "warn",
            BreakerState::Open => "fail",
        };
        let mut check = json!({"status": status, "observedValue": state.name()});
        if let Some(change) = &self.last_breaker_change {
            check["time"] = json!(rfc3339(&change.at));
            check["output"] = json!(change.reason);
        }
        checks.insert("database:breaker".into(), json!([check]));
        state != BreakerState::Open
    }

    fn own_state(&self) -> Value {
        let probe = match &self.probe {
            Probe::Pending => json!({"status": "pending"}),
            Probe::Passed { at, latency } => {
                json!({"status": "pass", "at": rfc3339(at), "latency_ms": latency.as_secs_f64() * 1000.0})
            }
            Probe::Failed { at } => json!({"status": "fail", "at": rfc3339(at)}),
        };
        let breaker = self.last_breaker_change.as_ref().map(|change| json!(change));
        json!({
            "probe": probe, "probe_interval_ms": self.probe_interval.as_millis() as u64,
            "shutting_down": self.shutting_down, "restarts_recorded": self.ledger.len(),
            "last_breaker_change": breaker,
        })
    }

    fn ledger_snapshot(&self) -> RestartLedger {
        let by_actor = self
            .restarts
            .iter()
            .map(|(actor, record)| {
                let summary = RestartSummary {
                    count: record.count,
                    last_at: record.last_at,
                    last_reason: Some(record.last_reason.clone()),
                };
                ((*actor).to_owned(), summary)
            })
            .collect();
        RestartLedger { newest_first: self.ledger.iter().rev().cloned().collect(), by_actor }
    }

    fn enter_in_ledger(&mut self, restart: ActorRestarted) {
        let record = self.restarts.entry(restart.actor).or_default();
        record.count += 1;
        record.last_at = Some(restart.at);
        record.last_reason.clone_from(&restart.reason);
        let data = json!({
            "actor": restart.actor, "reason": restart.reason, "at": rfc3339(&restart.at), "count": record.count,
        });
        if self.ledger.len() == LEDGER_LENGTH {
            self.ledger.pop_front();
        }
        self.ledger.push_back(restart);
        self.emit("actor.restarted", data);
    }
}

/// The data of `actor.backing_off` and `actor.recovered`: the actor's supervision, flat.
fn supervision_event(actor: &str, report: SupervisionReport) -> Value {
    let mut data = serde_json::to_value(report).unwrap_or_else(|_| json!({}));
    if let Some(fields) = data.as_object_mut() {
        fields.insert("actor".into(), json!(actor));
        fields.insert("at".into(), json!(rfc3339(&Utc::now())));
    }
    data
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

supervised_actor!(Health);

impl SupervisedActor for Health {
    /// Runs again after a restart; the database, ledger and shutdown flag survive it.
    fn start(&mut self, ctx: &mut Context<Self>) {
        self.probe_in_flight = false;
        self.tick(ctx);
        guarded_interval(ctx, self.probe_interval, Self::tick);
    }

    fn report_state(&mut self) -> Value {
        self.own_state()
    }

    /// Health keeps the ledger, so its own restarts are recorded right here (and its own
    /// backing off announced before it waits).
    fn record_restart(&mut self, restart: ActorRestarted) {
        self.enter_in_ledger(restart);
        if self.watch_backoffs() {
            self.announce_readiness();
        }
    }
}

/// What Health watches, all built after Health's address (which they report to).
pub struct Watched {
    /// The pool whose readiness and breaker Health judges.
    pub database: DbGateway,
    pub probe_thread: DedicatedProbe,
    /// Where readiness changes and backoffs are announced.
    pub ops: Recipient<OpsEvent>,
}

/// The probe's own thread. A probe taking longer than `timeout` counts as failed (and
/// opens the database breaker), so it must be generous: a slow moment is not an outage.
#[derive(Clone)]
pub struct DedicatedProbe {
    pub probe: Addr<DbProbe>,
    pub timeout: Duration,
}

impl Handler<ActorRestarted> for Health {
    type Result = ();
    fn handle(&mut self, msg: ActorRestarted, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.enter_in_ledger(msg);
            if act.watch_backoffs() {
                act.announce_readiness();
            }
        });
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
        guarded(self, ctx, |act, _| {
            tracing::info!("shutdown begun; readiness now fails");
            act.announce_readiness();
        });
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

impl Handler<BreakerChanged> for Health {
    type Result = ();
    fn handle(&mut self, msg: BreakerChanged, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.emit("breaker.changed", serde_json::to_value(&msg).unwrap_or(Value::Null));
            act.last_breaker_change = Some(msg);
            act.announce_readiness();
        });
    }
}

/// The restart ledger: the last 100 restarts newest first, and a summary per actor.
pub struct RestartLedger {
    pub newest_first: Vec<ActorRestarted>,
    pub by_actor: HashMap<String, RestartSummary>,
}

#[derive(Message)]
#[rtype(result = "Option<RestartLedger>")]
pub struct GetRestartLedger;

impl Handler<GetRestartLedger> for Health {
    type Result = MessageResult<GetRestartLedger>;
    fn handle(&mut self, _msg: GetRestartLedger, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(guarded(self, ctx, |act, _| act.ledger_snapshot()))
    }
}
