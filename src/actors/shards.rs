//! Per-HTTP-worker actor shards. The hot path (a cached, anonymous read and its rate
//! check) is answered by actors living on the worker's own arbiter, so the send never
//! leaves the thread; whatever must reach every shard (cache invalidations, fault
//! injection, reports) walks this registry.
//!
//! Each slot is written once per tenure, as a worker starts, and only read after: a
//! `OnceLock` publishes the address, no lock is ever held. A worker that actix starts again
//! after one died takes the dead one's slot over: its shard becomes the slot's next tenure
//! (a chain of `OnceLock`s; the taker is chosen by one compare-and-swap per takeover), so
//! the slot's keys have a live owner again and the fan-out reaches the new shard.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, OnceLock,
};

use actix::{Actor, Addr};

pub struct Shards<A: Actor> {
    slots: Arc<[Slot<A>]>,
    claimed: Arc<AtomicUsize>,
}

/// One worker's place: the shard of the worker that took it first, then of each worker
/// that took it over from a dead one.
struct Slot<A: Actor> {
    first: OnceLock<Tenure<A>>,
    /// Takeovers claimed so far (the tenures after the first, filled or about to be).
    takeovers: AtomicUsize,
}

struct Tenure<A: Actor> {
    addr: Addr<A>,
    next: OnceLock<Box<Tenure<A>>>,
}

impl<A: Actor> Clone for Shards<A> {
    fn clone(&self) -> Self {
        Self { slots: Arc::clone(&self.slots), claimed: Arc::clone(&self.claimed) }
    }
}

impl<A: Actor> Slot<A> {
    fn tenures(&self) -> impl Iterator<Item = &Tenure<A>> {
        std::iter::successors(self.first.get(), |tenure| tenure.next.get().map(|next| &**next))
    }

    fn current(&self) -> Option<&Tenure<A>> {
        self.tenures().last()
    }
}

impl<A: Actor> Shards<A> {
    /// One slot per HTTP worker.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers.max(1))
                .map(|_| Slot { first: OnceLock::new(), takeovers: AtomicUsize::new(0) })
                .collect(),
            claimed: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn configured(&self) -> usize {
        self.slots.len()
    }

    /// Publishes a worker's shard. False when every slot is taken by a live shard: such a
    /// worker's shard is not in the fan-out, so the caller must not rely on it for anything
    /// that has to be invalidated.
    pub fn publish(&self, addr: Addr<A>) -> bool {
        self.claim().is_some_and(|slot| self.fill(slot, addr))
    }

    /// Reserves a slot for a shard that must know its slot before it starts: the next one
    /// never taken, else one whose shard is dead (its worker died and actix started this
    /// one instead); `None` when every slot has a live shard.
    pub fn claim(&self) -> Option<usize> {
        let fresh = self.claimed.fetch_add(1, Ordering::AcqRel);
        if fresh < self.slots.len() {
            return Some(fresh);
        }
        self.slots.iter().position(|slot| {
            let tenures = slot.tenures().count();
            let dead = slot.current().is_some_and(|tenure| !tenure.addr.connected());
            // Only a filled tenure can be taken over, and only by one claimant.
            dead && tenures >= 1
                && slot.takeovers.compare_exchange(tenures - 1, tenures, Ordering::AcqRel, Ordering::Acquire).is_ok()
        })
    }

    /// Publishes the shard of a claimed slot.
    pub fn fill(&self, slot: usize, addr: Addr<A>) -> bool {
        let Some(slot) = self.slots.get(slot) else { return false };
        match slot.current() {
            None => slot.first.set(Tenure { addr, next: OnceLock::new() }).is_ok(),
            Some(current) => current.next.set(Box::new(Tenure { addr, next: OnceLock::new() })).is_ok(),
        }
    }

    /// The shard of one slot, once published: the latest tenure's.
    pub fn get(&self, slot: usize) -> Option<&Addr<A>> {
        self.slots.get(slot).and_then(Slot::current).map(|tenure| &tenure.addr)
    }

    /// Every published shard, in slot order.
    pub fn each(&self) -> impl Iterator<Item = &Addr<A>> {
        self.slots.iter().filter_map(Slot::current).map(|tenure| &tenure.addr)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix::Arbiter;

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
        assert!(!shards.publish(Nothing.start()), "every slot has a live shard");
        assert_eq!(shards.each().count(), 2);
        assert_eq!(shards.configured(), 2);
    }

    /// A worker dies (its arbiter stops, and its shard with it); the worker actix starts in
    /// its place takes the slot over, once, and the registry hands out the new shard.
    #[actix_rt::test]
    async fn a_restarted_worker_takes_over_the_slot_of_a_dead_one() {
        let shards = Shards::<Nothing>::new(2);
        assert!(shards.publish(Nothing.start()));
        let dying = Arbiter::new();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        dying.spawn_fn(move || {
            let _ = sender.send(Nothing.start());
        });
        let doomed = receiver.await.unwrap();
        assert!(shards.publish(doomed.clone()));
        assert!(!shards.publish(Nothing.start()), "no slot is free while both shards live");
        dying.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while doomed.connected() {
            assert!(tokio::time::Instant::now() < deadline, "the dead worker's shard is still connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let successor = Nothing.start();
        assert_eq!(shards.claim(), Some(1), "the dead worker's slot");
        assert!(shards.fill(1, successor.clone()));
        assert!(shards.get(1).is_some_and(|addr| addr.connected()));
        assert_eq!(shards.each().filter(|addr| addr.connected()).count(), 2);
        assert_eq!(shards.claim(), None, "taken over once");
    }
}
