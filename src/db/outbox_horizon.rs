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
//! The horizon moves like this. Each look reads, in three statements, one after the
//! other: the highest id drawn so far (`drawn`); a fresh transaction id (`marker`,
//! `pg_current_xact_id()` in a transaction of its own, which commits at once); and a
//! snapshot of the transactions running. Any event with an id up to `drawn` belongs to a
//! transaction that had its transaction id before it drew the event id (the id default
//! assigns one first: migration `outbox_without_lock`), so before the marker: its id is
//! below `marker`. Once no transaction below `marker` is running, all events up to `drawn`
//! are visible or never will be: the horizon moves to `drawn`. The snapshot is taken after
//! the marker committed, so it lists every transaction below the marker still running
//! (a snapshot leaves out only ids at or above its `xmax`, which is past the marker).
//! When none is, the horizon moves at once; otherwise a later look settles it.
//!
//! What it costs: three short statements per look (none when nothing was drawn since the
//! horizon last moved), and one transaction id per look, which commits without a WAL
//! flush (it wrote nothing); a reader waits for the write transactions that were running
//! when it looked (those it can see running in other databases excepted), so one left
//! open delays delivery, never loses it; and events are
//! delivered in id order, which is commit order for any two transactions that touched
//! the same row (the second drew its ids after the first committed, because writers
//! append their events last, after taking their row locks), and a consistent order for
//! every reader otherwise.
//!
//! SQLite serialises writers (`BEGIN IMMEDIATE`), so there ids follow commit order and
//! every visible id is below the horizon.

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Text},
};

use super::DbConnection;
use crate::error::AppError;

/// Candidates kept while transactions run; beyond that a reader just waits for the
/// oldest ones (the horizon moves to the newest candidate that settled).
const MAX_CANDIDATES: usize = 64;

/// A reader's view of the horizon, kept between reads.
#[derive(Debug, Clone, Default)]
pub struct Horizon {
    settled_through: i64,
    /// Ids drawn by the time of an earlier look, waiting for the transactions below that
    /// look's marker; oldest first (so markers ascend).
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone)]
struct Candidate {
    drawn: i64,
    marker: u64,
}

/// The transaction ids a snapshot lists as running (`pg_current_snapshot()`'s
/// `xmin:xmax:xip,...` text; subtransactions are not listed, their top-level one is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running(Vec<u64>);

impl Running {
    /// `elsewhere`: transactions known to run in other databases of the cluster (32-bit
    /// ids, as `pg_stat_activity` has them), which cannot append to this outbox. A
    /// session the reader may not see is simply not known, and is waited for.
    pub fn parse(snapshot: &str, elsewhere: &[i64]) -> Option<Self> {
        let mut parts = snapshot.splitn(3, ':');
        // Ids at or above xmax are not listed; the marker is below xmax (it committed first).
        let (_xmin, _xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
        let ids = xip.split(',').filter(|id| !id.is_empty()).map(str::parse).collect::<Result<Vec<u64>, _>>().ok()?;
        // A running 64-bit id is its epoch and its 32-bit id; ids that run at once are
        // less than 2^31 apart, so the low 32 bits tell them apart.
        let relevant = ids.into_iter().filter(|id| !elsewhere.contains(&((id & 0xFFFF_FFFF) as i64))).collect();
        Some(Self(relevant))
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

    /// Whether ids drawn at the last look are still waiting for running transactions:
    /// the reader should look again soon even if nothing new is announced.
    pub fn is_waiting(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// Takes one look: ids drawn through `drawn`, then the transaction id `marker`, then a
    /// snapshot listing `running`.
    pub fn observe(&mut self, drawn: i64, marker: u64, running: &Running) {
        let oldest_running = running.0.iter().min().copied().unwrap_or(u64::MAX);
        self.settle(oldest_running);
        if drawn > self.settled_through && self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push(Candidate { drawn, marker });
            self.settle(oldest_running);
        }
    }

    /// Settled: no transaction below the marker runs. Markers ascend, so the newest
    /// settled candidate settles every older one too.
    fn settle(&mut self, oldest_running: u64) {
        if let Some(newest_settled) = self.candidates.iter().rposition(|candidate| candidate.marker <= oldest_running) {
            self.settled_through = self.settled_through.max(self.candidates[newest_settled].drawn);
            self.candidates.drain(..=newest_settled);
        }
    }

    /// Whether a look is needed: ids were drawn past the horizon, or it waits.
    fn needs_look(&self, drawn: i64) -> bool {
        drawn > self.settled_through || self.is_waiting()
    }

    /// Looks at the database and returns the horizon (unbounded on SQLite). Call it
    /// outside a transaction: each of its statements must commit on its own.
    pub fn advance(&mut self, conn: &mut DbConnection) -> Result<i64, AppError> {
        let DbConnection::Postgres(pg) = conn else {
            self.settled_through = i64::MAX;
            return Ok(i64::MAX);
        };
        // Three statements, in this order (see the module docs); each commits on its own.
        let drawn = diesel::sql_query("SELECT last_value, is_called FROM events_id_seq")
            .get_result::<Sequence>(pg)
            .map(|sequence| if sequence.is_called { sequence.last_value } else { sequence.last_value - 1 })?;
        if !self.needs_look(drawn) {
            return Ok(self.settled_through);
        }
        let marker = diesel::sql_query("SELECT pg_current_xact_id()::text AS marker").get_result::<Marker>(pg)?;
        let marker: u64 = marker
            .marker
            .parse()
            .map_err(|_| AppError::Internal(format!("unreadable transaction id {:?}", marker.marker)))?;
        let snapshot = diesel::sql_query(
            "SELECT pg_current_snapshot()::text AS snapshot, ARRAY(SELECT backend_xid::text::bigint \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
             AND datname IS DISTINCT FROM current_database()) AS elsewhere",
        )
        .get_result::<Snapshot>(pg)?;
        let running = Running::parse(&snapshot.snapshot, &snapshot.elsewhere)
            .ok_or_else(|| AppError::Internal(format!("unreadable snapshot {:?}", snapshot.snapshot)))?;
        self.observe(drawn, marker, &running);
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
struct Marker {
    #[diesel(sql_type = Text)]
    marker: String,
}

#[derive(QueryableByName)]
struct Snapshot {
    #[diesel(sql_type = Text)]
    snapshot: String,
    #[diesel(sql_type = Array<BigInt>)]
    elsewhere: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(ids: &[u64]) -> Running {
        Running(ids.to_vec())
    }

    #[test]
    fn snapshots_are_parsed_with_and_without_running_transactions() {
        assert_eq!(Running::parse("100:104:100,102", &[]), Some(running(&[100, 102])));
        assert_eq!(Running::parse("100:100:", &[]), Some(running(&[])));
        assert_eq!(Running::parse("garbage", &[]), None);
        assert_eq!(Running::parse("1:2:x", &[]), None);
    }

    #[test]
    fn transactions_in_other_databases_are_not_waited_for() {
        // Epoch 1: 64-bit ids are 2^32 + the 32-bit id.
        let epoch = 1u64 << 32;
        let snapshot = format!("{}:{}:{},{}", epoch + 5, epoch + 9, epoch + 5, epoch + 7);
        assert_eq!(Running::parse(&snapshot, &[7]), Some(running(&[epoch + 5])));
    }

    #[test]
    fn with_nothing_running_the_horizon_moves_to_what_was_drawn() {
        let mut horizon = Horizon::at(5);
        horizon.observe(9, 1000, &running(&[]));
        assert_eq!(horizon.settled_through(), 9);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn transactions_that_began_after_the_marker_are_not_waited_for() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, 1000, &running(&[1000, 1003]));
        assert_eq!(horizon.settled_through(), 10, "1000 is the marker itself at most, 1003 came after");
    }

    #[test]
    fn the_horizon_waits_for_every_transaction_below_the_marker() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, 1000, &running(&[700, 999]));
        assert_eq!(horizon.settled_through(), 0, "700 or 999 may hold an id up to 10");
        assert!(horizon.is_waiting());
        // 700 ended, 999 still runs; 1005 came after the first look's marker.
        horizon.observe(12, 1010, &running(&[999, 1005]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(12, 1020, &running(&[1005]));
        assert_eq!(horizon.settled_through(), 10, "nothing below the first marker runs");
        assert!(horizon.is_waiting(), "1005 is below the second marker");
        horizon.observe(12, 1030, &running(&[]));
        assert_eq!(horizon.settled_through(), 12);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn a_newer_settled_look_settles_the_older_ones_too() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, 1000, &running(&[700]));
        horizon.observe(20, 1100, &running(&[700, 1050]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(30, 1200, &running(&[1150]));
        assert_eq!(horizon.settled_through(), 20, "700 and 1050 ended: both looks settled");
        assert!(horizon.is_waiting(), "the third look waits for 1150");
    }

    #[test]
    fn the_horizon_never_moves_back() {
        let mut horizon = Horizon::at(50);
        horizon.observe(40, 1000, &running(&[]));
        assert_eq!(horizon.settled_through(), 50);
        horizon.observe(45, 1001, &running(&[1]));
        assert!(!horizon.is_waiting(), "nothing above 50 was drawn");
        assert!(!horizon.needs_look(50));
        assert!(horizon.needs_look(51));
    }

    #[test]
    fn candidates_are_bounded_while_a_transaction_runs_for_long() {
        let mut horizon = Horizon::at(0);
        for drawn in 1..=1000 {
            horizon.observe(drawn, 10_000 + drawn as u64, &running(&[7]));
        }
        assert_eq!(horizon.candidates.len(), MAX_CANDIDATES);
        horizon.observe(1000, 20_000, &running(&[]));
        assert_eq!(horizon.settled_through(), 1000);
    }
}
