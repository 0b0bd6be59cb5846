//! How a SyncArbiter pool appears in the actors API. Its threads count themselves in as
//! their actor starts and out as it stops (a panicking one stops before its factory builds
//! the next), so the row is read from an atomic: asking a thread would wait behind the
//! work in its queue.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use serde_json::Value;

use super::report::{as_u64, ActorKind, ActorReport, Instances};

#[derive(Clone)]
pub struct PoolThreads {
    name: &'static str,
    configured: usize,
    alive: Arc<AtomicUsize>,
}

impl PoolThreads {
    pub fn new(name: &'static str, configured: usize) -> Self {
        Self { name, configured, alive: Arc::new(AtomicUsize::new(0)) }
    }

    /// Call from the actor's `started`.
    pub fn started(&self) {
        self.alive.fetch_add(1, Ordering::AcqRel);
    }

    /// Call from the actor's `stopped`.
    pub fn stopped(&self) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }

    /// The pool's row, with what it says about its work.
    pub fn report(&self, state: Value) -> ActorReport {
        let instances =
            Instances { configured: as_u64(self.configured), alive: as_u64(self.alive.load(Ordering::Acquire)) };
        ActorReport::new(self.name, ActorKind::SyncPool, instances, state)
    }
}

/// Implements `Actor` on a SyncArbiter for a worker whose `threads: PoolThreads` field
/// counts it in and out.
macro_rules! counted_sync_actor {
    ($actor:ty) => {
        impl actix::Actor for $actor {
            type Context = actix::SyncContext<Self>;

            fn started(&mut self, _ctx: &mut Self::Context) {
                self.threads.started();
            }

            fn stopped(&mut self, _ctx: &mut Self::Context) {
                self.threads.stopped();
            }
        }
    };
}
pub(crate) use counted_sync_actor;
