//! How far the outbox can be read without skipping an event that has yet to commit.
//!
//! On PostgreSQL an event's id is drawn from a sequence when it is inserted, so ids are
//! handed out in insert order, not commit order: while a transaction that drew id 10 is
//! still running, id 11 may already be visible. A reader that tailed `id > last` past 11
//! would never see 10. Writers do not serialise on a lock to prevent that (it would make
//! every appending commit, WAL flush included, wait for the one before); readers instead
//! read no further than the *horizon*: an id below which every event that will ever
//! commit is visible already.
//!
//! The horizon moves like this. Each look reads, in two statements, one after the other:
//! the highest id drawn so far (`drawn`), then the appenders running (`open`: the
//! transactions holding the outbox's shared advisory lock, which the id default takes
//! before it draws an id and which is released only after the commit is visible;
//! migration `outbox_without_lock`). Any event with an id up to `drawn` belongs to a
//! transaction that had the lock before `drawn` was read, so it is in `open` or has ended.
//! Once every appender in `open` has ended, all events up to `drawn` are visible or never
//! will be: the horizon moves to `drawn`. When `open` is empty it moves at once; otherwise
//! a later look settles it. A prepared (two-phase) appender changes its virtual id when it
//! prepares, so while one is open nothing settles. Readers must look at the primary: a
//! standby lists no appenders.
//!
//! What it costs: two short statements per look (none when nothing was drawn since the
//! horizon last moved); one shared advisory lock per appending transaction, which no
//! appender waits for; a reader waits only for the appenders that were running when it
//! looked, so an appender left open delays delivery, never loses it, and transactions that
//! append nothing (a session left idle in a transaction, a long report, `VACUUM`) hold
//! nobody up; and events are delivered in id order, which is commit order for any two
//! transactions that touched the same row (the second drew its ids after the first
//! committed, because writers append their events last, after taking their row locks),
//! and a consistent order for every reader otherwise.
//!
//! SQLite serialises writers (`BEGIN IMMEDIATE`), so there ids follow commit order and
//! every visible id is below the horizon.

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Text},
};

use super::DbConnection;
use crate::db::DbError;

/// Candidates kept while appenders run; beyond that a reader just waits for the oldest
/// ones (the horizon moves to the newest candidate that settled).
const MAX_CANDIDATES: usize = 64;

/// A reader's view of the horizon, kept between reads.
#[derive(Debug, Clone, Default)]
pub struct Horizon {
    settled_through: i64,
    /// Ids drawn by the time of an earlier look, waiting for the appenders open at that
    /// look; oldest first.
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone)]
struct Candidate {
    drawn: i64,
    /// Virtual transaction ids, as `pg_locks` names them.
    waits_for: Vec<String>,
}

/// How `outbox_open_appenders()` lists a prepared (two-phase) transaction: preparing moves
/// its locks to a new owner, so the virtual id a candidate waits for may have become this.
const PREPARED: &str = "prepared";

impl Candidate {
    /// While any prepared appender is open, nothing settles: it may be one this waits for.
    fn is_settled(&self, open: &[String]) -> bool {
        self.waits_for.iter().all(|appender| !open.contains(appender)) && !open.iter().any(|a| a == PREPARED)
    }
}

impl Horizon {
    /// A horizon known to stand at `settled_through` (where a reader starts).
    pub fn at(settled_through: i64) -> Self {
        Self { settled_through, candidates: Vec::new() }
    }

    /// Every event up to this id that will ever commit is visible.
    pub fn settled_through(&self) -> i64 {
        self.settled_through
    }

    /// The newest id drawn at any look so far (settled or not).
    pub fn newest_seen(&self) -> i64 {
        self.candidates.last().map_or(self.settled_through, |candidate| candidate.drawn)
    }

    /// Whether ids drawn at the last look are still waiting for running appenders: the
    /// reader should look again soon even if nothing new is announced.
    pub fn is_waiting(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// Takes one look: ids drawn through `drawn`, then the appenders `open` after that.
    pub fn observe(&mut self, drawn: i64, open: &[String]) {
        self.settle(open);
        if drawn > self.settled_through && self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push(Candidate { drawn, waits_for: open.to_vec() });
            self.settle(open);
        }
    }

    /// An appender open at a later look was open at every earlier look it was listed in,
    /// so the newest settled candidate settles every older one too.
    fn settle(&mut self, open: &[String]) {
        if let Some(newest_settled) = self.candidates.iter().rposition(|candidate| candidate.is_settled(open)) {
            self.settled_through = self.settled_through.max(self.candidates[newest_settled].drawn);
            self.candidates.drain(..=newest_settled);
        }
    }

    /// Whether a look is needed: ids were drawn past the horizon, or it waits.
    fn needs_look(&self, drawn: i64) -> bool {
        drawn > self.settled_through || self.is_waiting()
    }

    /// Looks at the database and returns the horizon (unbounded on SQLite). Call it
    /// outside a transaction: the second statement must see what ended after the first.
    pub fn advance(&mut self, conn: &mut DbConnection) -> Result<i64, DbError> {
        let DbConnection::Postgres(pg) = conn else {
            self.settled_through = i64::MAX;
            return Ok(i64::MAX);
        };
        // Two statements, in this order (see the module docs).
        let drawn = diesel::sql_query("SELECT last_value, is_called FROM events_id_seq")
            .get_result::<Sequence>(pg)
            .map(|sequence| if sequence.is_called { sequence.last_value } else { sequence.last_value - 1 })?;
        if !self.needs_look(drawn) {
            return Ok(self.settled_through);
        }
        let open = diesel::sql_query("SELECT outbox_open_appenders() AS open").get_result::<OpenAppenders>(pg)?;
        self.observe(drawn, &open.open);
        Ok(self.settled_through)
    }
}

#[derive(QueryableByName)]
struct Sequence {
    #[diesel(sql_type = BigInt)]
    last_value: i64,
    #[diesel(sql_type = Bool)]
    is_called: bool,
}

#[derive(QueryableByName)]
struct OpenAppenders {
    #[diesel(sql_type = Array<Text>)]
    open: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(appenders: &[&str]) -> Vec<String> {
        appenders.iter().map(|appender| (*appender).to_owned()).collect()
    }

    #[test]
    fn with_no_appender_open_the_horizon_moves_to_what_was_drawn() {
        let mut horizon = Horizon::at(5);
        horizon.observe(9, &open(&[]));
        assert_eq!(horizon.settled_through(), 9);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn the_horizon_waits_for_every_appender_open_when_it_looked() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, &open(&["3/7", "4/2"]));
        assert_eq!(horizon.settled_through(), 0, "3/7 or 4/2 may hold an id up to 10");
        assert!(horizon.is_waiting());
        // 3/7 ended, 4/2 still runs; 5/1 began after the first look.
        horizon.observe(12, &open(&["4/2", "5/1"]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(12, &open(&["5/1"]));
        assert_eq!(horizon.settled_through(), 10, "every appender of the first look ended");
        assert!(horizon.is_waiting(), "5/1 was open at the second look");
        horizon.observe(12, &open(&[]));
        assert_eq!(horizon.settled_through(), 12);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn a_steady_stream_of_appenders_never_keeps_the_horizon_waiting() {
        let mut horizon = Horizon::at(0);
        // Every look finds an appender open, a different one each time, each ended by the next.
        for n in 1..=10 {
            let appender = format!("9/{n}");
            horizon.observe(n * 10, &open(&[appender.as_str()]));
            assert_eq!(horizon.settled_through(), (n - 1) * 10, "the look before settled");
        }
    }

    #[test]
    fn a_newer_settled_look_settles_the_older_ones_too() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, &open(&["1/1"]));
        horizon.observe(20, &open(&["1/1", "2/1"]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(30, &open(&["3/1"]));
        assert_eq!(horizon.settled_through(), 20, "1/1 and 2/1 ended: both looks settled");
        assert!(horizon.is_waiting(), "the third look waits for 3/1");
    }

    #[test]
    fn the_horizon_never_moves_back() {
        let mut horizon = Horizon::at(50);
        horizon.observe(40, &open(&[]));
        assert_eq!(horizon.settled_through(), 50);
        horizon.observe(45, &open(&["1/1"]));
        assert!(!horizon.is_waiting(), "nothing above 50 was drawn");
        assert!(!horizon.needs_look(50));
        assert!(horizon.needs_look(51));
    }

    #[test]
    fn nothing_settles_while_a_prepared_appender_is_open() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, &open(&["3/7"]));
        // 3/7 ran PREPARE TRANSACTION: its lock is the prepared transaction's now.
        horizon.observe(10, &open(&[PREPARED]));
        assert_eq!(horizon.settled_through(), 0, "3/7 may be the prepared one");
        horizon.observe(11, &open(&[PREPARED, "4/1"]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(11, &open(&[]));
        assert_eq!(horizon.settled_through(), 11, "committed or rolled back: both looks settle");
    }

    #[test]
    fn candidates_are_bounded_while_an_appender_runs_for_long() {
        let mut horizon = Horizon::at(0);
        for drawn in 1..=1000 {
            horizon.observe(drawn, &open(&["7/7"]));
        }
        assert_eq!(horizon.candidates.len(), MAX_CANDIDATES);
        horizon.observe(1000, &open(&[]));
        assert_eq!(horizon.settled_through(), 1000);
    }
}
