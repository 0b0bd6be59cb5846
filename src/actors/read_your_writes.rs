//! Read-your-writes for the writer. The EventRelay is the one place that drops the cache
//! entries a commit made stale, this replica's commits included, so a write is answered
//! only once the relay has read past it:
//!
//! - the DbExecutor takes a ticket when a use case that appended events returns `Ok`
//!   (after its COMMIT), before it wakes the relay;
//! - the relay notes how many tickets were taken when a poll starts; once that poll has
//!   read to the end of the outbox and sent its invalidations, those tickets are covered;
//! - the DbGateway holds the writer's answer until its ticket is covered.
//!
//! Cache mailboxes are FIFO, so a read the writer asks for after its answer is served
//! after the invalidation. A write whose caller gave up (504) needs none of this: it has
//! no one to answer, and the relay reads its events whenever it commits.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::watch;

/// A commit that appended events, in the order they returned.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// The tickets taken before a relay poll started: all of them committed before it read.
#[derive(Debug, Clone, Copy)]
pub struct Horizon(u64);

pub struct ReadYourWrites {
    taken: AtomicU64,
    /// The newest ticket whose invalidations the relay has sent.
    covered: watch::Sender<u64>,
}

impl Default for ReadYourWrites {
    fn default() -> Self {
        Self { taken: AtomicU64::new(0), covered: watch::Sender::new(0) }
    }
}

impl ReadYourWrites {
    /// Call after the commit and before waking the relay, so the poll it wakes covers it.
    pub fn committed(&self) -> Ticket {
        Ticket(self.taken.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Call before reading the outbox (or clearing the cache).
    pub fn horizon(&self) -> Horizon {
        Horizon(self.taken.load(Ordering::Acquire))
    }

    /// Every commit before `horizon` is invisible in the cache now.
    pub fn covered(&self, horizon: Horizon) {
        self.covered.send_if_modified(|covered| {
            let newer = horizon.0 > *covered;
            if newer {
                *covered = horizon.0;
            }
            newer
        });
    }

    /// Waits until `ticket` is covered; false when `within` passed first.
    pub async fn wait(&self, ticket: Ticket, within: Duration) -> bool {
        let mut covered = self.covered.subscribe();
        let waited = actix_rt::time::timeout(within, covered.wait_for(|covered| *covered >= ticket.0)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_ticket_is_covered_only_by_a_poll_that_started_after_it() {
        let barrier = ReadYourWrites::default();
        let before = barrier.horizon();
        let ticket = barrier.committed();
        barrier.covered(before);
        assert!(!barrier.wait(ticket, Duration::from_millis(10)).await, "that poll read before the commit");

        let after = barrier.horizon();
        barrier.committed();
        barrier.covered(after);
        assert!(barrier.wait(ticket, Duration::from_millis(10)).await);
        barrier.covered(before);
        assert!(barrier.wait(ticket, Duration::from_millis(10)).await, "an older horizon never uncovers a ticket");
    }
}
