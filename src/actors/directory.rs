//! The directory behind `GET /api/v1/ops/actors`: one entry per actor kind, in the order
//! the page shows them. Adding a row is one call at start-up: `ask` for an async actor
//! that handles `GetActorReport`, `describe` for anything read from the outside.

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::Recipient;

use super::report::{ActorReport, GetActorReport, RestartSummary};
use crate::metrics::Metrics;

/// An actor that does not answer within this is shown as not alive; the endpoint never
/// waits longer than this for all of them together.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(200);

type Describe = Arc<dyn Fn() -> ActorReport + Send + Sync>;

#[derive(Clone)]
enum Entry {
    Asked { name: &'static str, recipient: Recipient<GetActorReport> },
    Described(Describe),
}

#[derive(Clone, Default)]
pub struct ActorDirectory {
    entries: Vec<Entry>,
}

impl ActorDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// An async actor, asked for its report with a timeout.
    pub fn ask(&mut self, name: &'static str, recipient: Recipient<GetActorReport>) -> &mut Self {
        self.entries.push(Entry::Asked { name, recipient });
        self
    }

    /// A row built without asking anyone (thread pools, the breaker, disabled actors).
    pub fn describe(&mut self, describe: impl Fn() -> ActorReport + Send + Sync + 'static) -> &mut Self {
        self.entries.push(Entry::Described(Arc::new(describe)));
        self
    }

    /// Every row, asked concurrently. Restart counts come from
    /// `storefront_actor_restarts_total` (always there, even when Health is down), the last
    /// time and reason from the Health actor's ledger when it answered.
    pub async fn reports(&self, metrics: &Metrics, ledger: &HashMap<String, RestartSummary>) -> Vec<ActorReport> {
        let asks = self.entries.iter().map(|entry| async move {
            match entry {
                Entry::Described(describe) => describe(),
                Entry::Asked { name, recipient } => match recipient.send(GetActorReport).timeout(ASK_TIMEOUT).await {
                    Ok(report) => report,
                    Err(actix::MailboxError::Timeout) => ActorReport::unresponsive(name, "no answer within 200 ms"),
                    Err(actix::MailboxError::Closed) => ActorReport::unresponsive(name, "mailbox closed"),
                },
            }
        });
        let mut reports = futures_util::future::join_all(asks).await;
        let counts = restart_counts(metrics);
        for report in &mut reports {
            let known = ledger.get(&report.name).cloned().unwrap_or_default();
            let count = counts.get(&report.name).copied().unwrap_or(0).max(known.count);
            report.restarts = RestartSummary { count, ..known };
        }
        reports
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
