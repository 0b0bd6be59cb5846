//! Where the event stream stands, as reads report it: the `Event-Position` a `GET` of an
//! outbox-backed resource answers, so that a client that subscribes with `"since"` set
//! to it misses no change the answer did not reflect.
//!
//! The EventRelay publishes an outbox id every event at or below which is *settled*:
//! committed and visible to every new read, or never to commit. It publishes
//! `min(last id it read, its horizon)`: the relay reads no further than the outbox
//! horizon (`db::outbox_horizon`), below which everything is settled by definition; the
//! `min` matters only at start-up on PostgreSQL, where `events::StartingPoint` may give up
//! waiting for an appender and start the tail past a horizon that has not settled. On
//! SQLite writers take turns, so an id the relay read is committed and every lower id
//! committed before it (the horizon there is `i64::MAX`).
//!
//! A read observes the published position *before* its database read begins (see
//! `DbGateway::read_positioned`, through which the cache loads too). Then every change
//! the answer does not reflect has a larger id: an event at or below the position was
//! settled before it was published, so its transaction had committed (and is in the
//! read) or never commits. A position that lags only costs a subscriber events it
//! already reflects, which are harmless to apply again (events carry the full new state).
//! A cached answer keeps the position observed before the load that filled it: whatever
//! the entry misses committed after that load began, so it has a larger id too.
//!
//! The published value only moves forward, and survives the relay's restarts (the
//! supervisor keeps the relay's struct, and with it this handle).

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc,
};

/// The position reads answer: written by the EventRelay, read by every positioned read.
#[derive(Debug, Clone, Default)]
pub struct EventPosition(Arc<AtomicI64>);

impl EventPosition {
    /// The newest published position. Call it before the read it positions begins.
    pub fn observe(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// Publishes `settled` (every event id at or below it settled, see the module docs);
    /// a lower value than the one published leaves it as it is.
    pub fn advance_to(&self, settled: i64) {
        self.0.fetch_max(settled, Ordering::AcqRel);
    }
}

/// What a read answered, and the position observed before it began.
#[derive(Debug, Clone)]
pub struct Positioned<T> {
    pub value: T,
    pub position: i64,
}

impl<T> Positioned<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Positioned<U> {
        Positioned { value: f(self.value), position: self.position }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_never_moves_back_and_every_clone_sees_it() {
        let position = EventPosition::default();
        let reader = position.clone();
        assert_eq!(reader.observe(), 0);
        position.advance_to(7);
        position.advance_to(5);
        assert_eq!(reader.observe(), 7);
    }
}
