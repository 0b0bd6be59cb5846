//! The directory behind `GET /api/v1/ops/actors`: one entry per actor kind, in the order
//! the page shows them. Adding a row is one call at start-up: `ask` for an async actor
//! that handles `GetActorReport`, `describe` for anything read from the outside.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::Recipient;

use super::{
    report::{ActorKind, ActorReport, GetActorReport, Instances, RestartSummary},
    restarts::RestartRegistry,
};
use crate::metrics::Metrics;

/// An actor that does not answer within this is shown as not alive; the endpoint never
/// waits longer than this for all of them together.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(200);

type Describe = Arc<dyn Fn() -> ActorReport + Send + Sync>;

type ListShards = Arc<dyn Fn() -> Vec<Recipient<GetActorReport>> + Send + Sync>;

#[derive(Clone)]
enum Entry {
    Asked { name: &'static str, recipient: Recipient<GetActorReport> },
    Described(Describe),
    Sharded(Sharded),
}

/// An actor kind with one shard per HTTP worker, shown as one row.
#[derive(Clone)]
struct Sharded {
    name: &'static str,
    /// The actor the row is about, when the shards are a tier in front of it (the cache):
    /// its report is the row, the shards' go under `state.shards`. Without it the
    /// shards are the actor (the rate limiter): instances count them.
    primary: Option<Recipient<GetActorReport>>,
    shards: ListShards,
    configured: usize,
    /// Numeric state fields that are per shard and shown summed.
    summed: &'static [&'static str],
}

#[derive(Clone)]
pub struct ActorDirectory {
    entries: Vec<Entry>,
    restarts: RestartRegistry,
}

impl ActorDirectory {
    pub fn new(restarts: RestartRegistry) -> Self {
        Self { entries: Vec::new(), restarts }
    }

    /// Every actor's restart history (whether it is backing off, its injected faults).
    pub fn restarts(&self) -> &RestartRegistry {
        &self.restarts
    }

    /// An async actor, asked for its report with a timeout.
    pub fn ask(&mut self, name: &'static str, recipient: Recipient<GetActorReport>) -> &mut Self {
        self.entries.push(Entry::Asked { name, recipient });
        self
    }

    /// An actor kind sharded over the HTTP workers (see `Sharded`).
    pub fn ask_shards(
        &mut self,
        name: &'static str,
        primary: Option<Recipient<GetActorReport>>,
        configured: usize,
        summed: &'static [&'static str],
        shards: impl Fn() -> Vec<Recipient<GetActorReport>> + Send + Sync + 'static,
    ) -> &mut Self {
        self.entries.push(Entry::Sharded(Sharded { name, primary, shards: Arc::new(shards), configured, summed }));
        self
    }

    /// A row built without asking anyone (thread pools, the breaker, disabled actors).
    pub fn describe(&mut self, describe: impl Fn() -> ActorReport + Send + Sync + 'static) -> &mut Self {
        self.entries.push(Entry::Described(Arc::new(describe)));
        self
    }

    /// Every row, asked concurrently. Restart counts come from
    /// `storefront_actor_restarts_total` (always there, even when Health is down), the last
    /// time and reason from the Health actor's ledger when it answered, the supervision
    /// from the actor's restart history.
    pub async fn reports(&self, metrics: &Metrics, ledger: &HashMap<String, RestartSummary>) -> Vec<ActorReport> {
        let asks = self.entries.iter().map(|entry| async move {
            match entry {
                Entry::Described(describe) => describe(),
                Entry::Asked { name, recipient } => ask(name, recipient).await,
                Entry::Sharded(sharded) => sharded.report().await,
            }
        });
        let mut reports = futures_util::future::join_all(asks).await;
        let counts = restart_counts(metrics);
        for report in &mut reports {
            let known = ledger.get(&report.name).cloned().unwrap_or_default();
            let count = counts.get(&report.name).copied().unwrap_or(0).max(known.count);
            report.restarts = RestartSummary { count, ..known };
            report.supervision = self.restarts.find(&report.name).map(|restarts| restarts.report());
        }
        reports
    }
}

async fn ask(name: &str, recipient: &Recipient<GetActorReport>) -> ActorReport {
    match recipient.send(GetActorReport).timeout(ASK_TIMEOUT).await {
        Ok(report) => report,
        Err(actix::MailboxError::Timeout) => ActorReport::unresponsive(name, "no answer within 200 ms"),
        Err(actix::MailboxError::Closed) => ActorReport::unresponsive(name, "mailbox closed"),
    }
}

impl Sharded {
    async fn report(&self) -> ActorReport {
        let shards = (self.shards)();
        let answers = futures_util::future::join_all(shards.iter().map(|shard| ask(self.name, shard))).await;
        let alive: Vec<&ActorReport> = answers.iter().filter(|report| report.instances.alive > 0).collect();
        let configured = self.configured as u64;
        let mut state = alive.first().map(|report| report.state.clone()).unwrap_or_else(|| serde_json::json!({}));
        if let Some(fields) = state.as_object_mut() {
            for field in self.summed {
                let sum: u64 = alive.iter().filter_map(|report| report.state.get(*field)?.as_u64()).sum();
                fields.insert((*field).into(), sum.into());
            }
        }
        let shard_summary = serde_json::json!({"configured": configured, "alive": alive.len(), "totals": state});
        match &self.primary {
            Some(primary) => {
                let mut report = ask(self.name, primary).await;
                if let Some(fields) = report.state.as_object_mut() {
                    fields.insert("shards".into(), shard_summary);
                }
                report
            }
            None => {
                let instances = Instances { configured, alive: alive.len() as u64 };
                let mut report = ActorReport::new(self.name, ActorKind::Async, instances, state);
                if let Some(fields) = report.state.as_object_mut() {
                    fields.insert("shards".into(), serde_json::json!({"configured": configured, "alive": alive.len()}));
                }
                report
            }
        }
    }
}

fn restart_counts(metrics: &Metrics) -> HashMap<String, u64> {
    let families = metrics.gather();
    let Some(family) = families.iter().find(|family| family.name() == "storefront_actor_restarts_total") else {
        return HashMap::new();
    };
    family
        .get_metric()
        .iter()
        .filter_map(|metric| {
            let actor = metric.get_label().iter().find(|label| label.name() == "actor")?;
            // Counters hold whole numbers; the float is exact below 2^53.
            Some((actor.value().to_owned(), metric.get_counter().get_value() as u64))
        })
        .collect()
}
