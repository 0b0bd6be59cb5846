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
//! The horizon moves like this. Each advance reads the highest id drawn so far (`drawn`),
//! and then, in a later statement, a snapshot: the transactions running at that moment.
//! Any event with an id up to `drawn` belongs to a transaction that had its transaction id
//! before it drew the event id (the id default assigns one first: migration
//! `outbox_without_lock`), so at the snapshot that transaction had either committed, and
//! its events are visible, or it is one of the running ones. Once every one of those has
//! ended (a later snapshot no longer lists it), all events up to `drawn` are visible or
//! never will be: the horizon moves to `drawn`. When nothing was running, at once.
//!
//! What it costs: two short statements per read; a reader waits for the transactions
//! that were running when it looked, all of them on the cluster, so a long-running write
//! transaction elsewhere delays delivery (never loses it) until it ends; and events are
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
    /// Ids drawn by the time of an earlier look, waiting for the transactions that were
    /// running then; oldest first.
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone)]
struct Candidate {
    drawn: i64,
    running: Vec<u64>,
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

    /// Takes one look: ids drawn through `drawn`, then a snapshot listing `running`.
    pub fn observe(&mut self, drawn: i64, running: &Running) {
        // A candidate whose transactions all ended has settled; so has every older one.
        if let Some(newest_settled) = self
            .candidates
            .iter()
            .rposition(|candidate| candidate.running.iter().all(|transaction| !running.0.contains(transaction)))
        {
            self.settled_through = self.settled_through.max(self.candidates[newest_settled].drawn);
            self.candidates.drain(..=newest_settled);
        }
        if drawn <= self.settled_through {
            return;
        }
        if running.0.is_empty() {
            self.settled_through = drawn;
            self.candidates.clear();
        } else if self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push(Candidate { drawn, running: running.0.clone() });
        }
    }

    /// Looks at the database and returns the horizon (unbounded on SQLite).
    pub fn advance(&mut self, conn: &mut DbConnection) -> Result<i64, AppError> {
        let DbConnection::Postgres(pg) = conn else {
            self.settled_through = i64::MAX;
            return Ok(i64::MAX);
        };
        // Two statements, in this order: every id counted in `drawn` was drawn before the
        // snapshot was taken.
        let drawn = diesel::sql_query("SELECT last_value, is_called FROM events_id_seq")
            .get_result::<Sequence>(pg)
            .map(|sequence| if sequence.is_called { sequence.last_value } else { sequence.last_value - 1 })?;
        let snapshot = diesel::sql_query(
            "SELECT pg_current_snapshot()::text AS snapshot, ARRAY(SELECT backend_xid::text::bigint \
             FROM pg_stat_activity WHERE backend_xid IS NOT NULL \
             AND datname IS DISTINCT FROM current_database()) AS elsewhere",
        )
        .get_result::<Snapshot>(pg)?;
        let running = Running::parse(&snapshot.snapshot, &snapshot.elsewhere)
            .ok_or_else(|| AppError::Internal(format!("unreadable snapshot {:?}", snapshot.snapshot)))?;
        self.observe(drawn, &running);
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
        horizon.observe(9, &running(&[]));
        assert_eq!(horizon.settled_through(), 9);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn the_horizon_waits_for_the_transactions_running_when_it_looked() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, &running(&[700, 701]));
        assert_eq!(horizon.settled_through(), 0, "700 or 701 may hold an id up to 10");
        assert!(horizon.is_waiting());
        // 700 ended, 701 still runs; new transactions (702) are not waited for by the first look.
        horizon.observe(12, &running(&[701, 702]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(12, &running(&[702]));
        assert_eq!(horizon.settled_through(), 10, "both transactions of the first look ended");
        horizon.observe(12, &running(&[]));
        assert_eq!(horizon.settled_through(), 12);
        assert!(!horizon.is_waiting());
    }

    #[test]
    fn a_newer_settled_look_settles_the_older_ones_too() {
        let mut horizon = Horizon::at(0);
        horizon.observe(10, &running(&[700]));
        horizon.observe(20, &running(&[700, 800]));
        // 800 ended, 700 still runs: the second look also waits for 700.
        horizon.observe(20, &running(&[700]));
        assert_eq!(horizon.settled_through(), 0);
        horizon.observe(30, &running(&[900]));
        assert_eq!(horizon.settled_through(), 20, "700 ended: both looks settled");
        assert!(horizon.is_waiting(), "the third look waits for 900");
    }

    #[test]
    fn the_horizon_never_moves_back() {
        let mut horizon = Horizon::at(50);
        horizon.observe(40, &running(&[]));
        assert_eq!(horizon.settled_through(), 50);
        horizon.observe(45, &running(&[1]));
        assert!(!horizon.is_waiting(), "nothing above 50 was drawn");
    }

    #[test]
    fn candidates_are_bounded_while_a_transaction_runs_for_long() {
        let mut horizon = Horizon::at(0);
        for drawn in 1..=1000 {
            horizon.observe(drawn, &running(&[7]));
        }
        assert_eq!(horizon.candidates.len(), MAX_CANDIDATES);
        horizon.observe(1000, &running(&[]));
        assert_eq!(horizon.settled_through(), 1000);
    }
}
