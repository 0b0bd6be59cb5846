//! Per-HTTP-worker actor shards. The hot path (a cached, anonymous read and its rate
//! check) is answered by actors living on the worker's own arbiter, so the send never
//! leaves the thread; whatever must reach every shard (cache invalidations, fault
//! injection, reports) walks this registry.
//!
//! The registry is written once per slot, as each worker starts, and only read after:
//! a `OnceLock` per slot publishes the address, no lock is ever held.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, OnceLock,
};

use actix::{Actor, Addr};

pub struct Shards<A: Actor> {
    slots: Arc<[OnceLock<Addr<A>>]>,
    claimed: Arc<AtomicUsize>,
}

impl<A: Actor> Clone for Shards<A> {
    fn clone(&self) -> Self {
        Self { slots: Arc::clone(&self.slots), claimed: Arc::clone(&self.claimed) }
    }
}

impl<A: Actor> Shards<A> {
    /// One slot per HTTP worker.
    pub fn new(workers: usize) -> Self {
        Self { slots: (0..workers.max(1)).map(|_| OnceLock::new()).collect(), claimed: Arc::new(AtomicUsize::new(0)) }
    }

    pub fn configured(&self) -> usize {
        self.slots.len()
    }

    /// Publishes a worker's shard. False when every slot is already taken: a worker that
    /// actix restarted after it died. Such a worker's shard is not in the fan-out, so the
    /// caller must not rely on it for anything that has to be invalidated.
    pub fn publish(&self, addr: Addr<A>) -> bool {
        self.claim().is_some_and(|slot| self.fill(slot, addr))
    }

    /// Reserves the next slot for a shard that must know its slot before it starts;
    /// `None` when every slot is taken (see `publish`).
    pub fn claim(&self) -> Option<usize> {
        let slot = self.claimed.fetch_add(1, Ordering::AcqRel);
        (slot < self.slots.len()).then_some(slot)
    }

    /// Publishes the shard of a claimed slot.
    pub fn fill(&self, slot: usize, addr: Addr<A>) -> bool {
        self.slots.get(slot).is_some_and(|slot| slot.set(addr).is_ok())
    }

    /// The shard of one slot, once published.
    pub fn get(&self, slot: usize) -> Option<&Addr<A>> {
        self.slots.get(slot).and_then(OnceLock::get)
    }

    /// Every published shard, in slot order.
    pub fn each(&self) -> impl Iterator<Item = &Addr<A>> {
        self.slots.iter().filter_map(OnceLock::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Actor for Nothing {
        type Context = actix::Context<Self>;
    }

    #[actix_rt::test]
    async fn a_slot_is_published_once_and_extra_workers_are_refused() {
        let shards = Shards::<Nothing>::new(2);
        assert!(shards.publish(Nothing.start()));
        assert!(shards.publish(Nothing.start()));
        assert!(!shards.publish(Nothing.start()), "a restarted worker finds every slot taken");
        assert_eq!(shards.each().count(), 2);
        assert_eq!(shards.configured(), 2);
    }
}
