//! A SyncArbiter pool under supervision. Its threads count themselves in as their actor
//! starts and out as it stops (a panicking one stops before its factory builds the next),
//! so the pool's row in the actors API is read from an atomic: asking a thread would wait
//! behind the work in its queue.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use prometheus::IntGauge;
use serde_json::Value;

use super::report::{as_u64, ActorKind, ActorReport, Instances};

#[derive(Clone)]
pub struct PoolThreads {
    name: &'static str,
    configured: usize,
    alive: Arc<AtomicUsize>,
    /// A metric that follows the count (`storefront_db_workers_alive`), if any.
    gauge: Option<IntGauge>,
}

impl PoolThreads {
    pub fn new(name: &'static str, configured: usize) -> Self {
        Self { name, configured, alive: Arc::new(AtomicUsize::new(0)), gauge: None }
    }

    /// Also keeps `gauge` at the number of threads alive.
    pub fn exported_as(mut self, gauge: IntGauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Call from the actor's `started`.
    pub fn started(&self) {
        self.alive.fetch_add(1, Ordering::AcqRel);
        self.gauge.iter().for_each(IntGauge::inc);
    }

    /// Call from the actor's `stopped`.
    pub fn stopped(&self) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
        self.gauge.iter().for_each(IntGauge::dec);
    }

    pub fn configured(&self) -> usize {
        self.configured
    }

    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::Acquire)
    }

    /// The pool's row, with what it says about its work.
    pub fn report(&self, state: Value) -> ActorReport {
        let instances = Instances { configured: as_u64(self.configured), alive: as_u64(self.alive()) };
        ActorReport::new(self.name, ActorKind::SyncPool, instances, state)
    }
}

/// Implements `Actor` on a SyncArbiter for a pool worker whose `threads: PoolThreads`
/// field counts it in and out and whose `supervision: Supervision` field runs its work
/// (`Supervision::catch`) and holds its thread back while its restart backs off.
macro_rules! supervised_pool_actor {
    ($actor:ty) => {
        impl actix::Actor for $actor {
            type Context = actix::SyncContext<Self>;

            fn started(&mut self, _ctx: &mut Self::Context) {
                self.threads.started();
            }

            fn stopped(&mut self, _ctx: &mut Self::Context) {
                self.threads.stopped();
                self.supervision.wait_before_restart();
            }
        }
    };
}
pub(crate) use supervised_pool_actor;
