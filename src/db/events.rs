//! Reading the outbox back: what the EventRelay tails, and what a live-updates subscriber
//! resuming from an event id is replayed.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{
    outbox::Outbox,
    outbox_horizon::Horizon,
    schema::{events, outbox_watermark},
    DbConnection, UseCase,
};
use crate::db::DbError;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct StoredEvent {
    pub id: i64,
    pub topic: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub payload: String,
    pub origin: Option<String>,
    pub created_at: NaiveDateTime,
}

/// Where a new tail starts: the newest event id, once nothing below it is still to commit.
/// On PostgreSQL that waits for the appenders running when it looked (`outbox_horizon`),
/// for at most `SETTLE_WAIT`; after that the tail starts anyway, at the newest id drawn,
/// and the horizon it returns still waits for them (so no reader is told they settled).
pub struct StartingPoint;

const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const SETTLE_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

impl StartingPoint {
    pub fn find(conn: &mut DbConnection) -> Result<(i64, Horizon), DbError> {
        let newest = events::table.select(diesel::dsl::max(events::id)).first::<Option<i64>>(conn)?.unwrap_or(0);
        if matches!(conn, DbConnection::Sqlite(_)) {
            return Ok((newest, Horizon::at(i64::MAX)));
        }
        let mut horizon = Horizon::at(0);
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        loop {
            horizon.advance(conn)?;
            let target = horizon.newest_seen();
            if !horizon.is_waiting() || std::time::Instant::now() >= deadline {
                if horizon.is_waiting() {
                    tracing::warn!(
                        events_through = target,
                        "appending transactions running at start-up have not ended; their events will reach \
                         other replicas and NATS, but this replica's live tail and replays may miss \
                         them, and entries they make stale may stay in its cache for CACHE_TTL_SECONDS"
                    );
                }
                return Ok((target, horizon));
            }
            std::thread::sleep(SETTLE_RECHECK);
        }
    }
}

/// Events after `after` and no further than the horizon, oldest first, at most `limit`.
pub struct EventsAfter {
    pub after: i64,
    pub limit: i64,
    pub horizon: Horizon,
}

pub struct Tail {
    pub events: Vec<StoredEvent>,
    pub horizon: Horizon,
}

impl UseCase for EventsAfter {
    type Output = Tail;
    fn run(mut self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Tail, DbError> {
        let through = self.horizon.advance(conn)?;
        let events = events::table
            .filter(events::id.gt(self.after))
            .filter(events::id.le(through))
            .order(events::id.asc())
            .limit(self.limit)
            .select(StoredEvent::as_select())
            .load(conn)?;
        Ok(Tail { events, horizon: self.horizon })
    }
}

/// One page of a replay: events on `topics` with `after < id <= through`, oldest first,
/// bounded in rows and in payload bytes (a page holds at least one event, however large),
/// so a subscriber's replay never holds more than a page in memory.
pub struct ReplayPage {
    pub after: i64,
    pub through: i64,
    pub topics: Vec<&'static str>,
    /// Whose private events to read: `Some(user)` reads public events and that user's,
    /// `None` public ones only; `all_private` (a role that sees every order) reads all.
    pub owner: Option<String>,
    pub all_private: bool,
    pub max_rows: i64,
    pub max_bytes: usize,
}

#[derive(Debug)]
pub enum Replay {
    /// The next events, and whether more may follow up to `through`.
    Events { events: Vec<StoredEvent>, more: bool },
    /// Retention already pruned events after `after`: a gap-free replay is impossible.
    Expired { pruned_through: i64 },
}

diesel::define_sql_function! {
    /// Bytes, not characters (PostgreSQL; SQLite since 3.43).
    fn octet_length(text: diesel::sql_types::Text) -> diesel::sql_types::Integer;
}

impl ReplayPage {
    /// The events this page may read, up to `through`, as a boxed query to narrow further.
    fn visible(&self, through: i64) -> events::BoxedQuery<'static, <DbConnection as diesel::Connection>::Backend> {
        let mut query = events::table
            .filter(events::id.gt(self.after))
            .filter(events::id.le(through))
            .filter(events::topic.eq_any(self.topics.clone()))
            .into_boxed();
        if !self.all_private {
            query = match self.owner.clone() {
                Some(owner) => query.filter(events::user_id.is_null().or(events::user_id.eq(owner))),
                None => query.filter(events::user_id.is_null()),
            };
        }
        query
    }
}

impl UseCase for ReplayPage {
    type Output = Replay;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Replay, DbError> {
        // First only the sizes, to find where the page ends in bytes; then exactly those rows.
        let sizes: Vec<(i64, i32)> = self
            .visible(self.through)
            .order(events::id.asc())
            .limit(self.max_rows)
            .select((events::id, octet_length(events::payload)))
            .load(conn)?;
        let mut last = None;
        let mut bytes = 0usize;
        for (id, size) in &sizes {
            bytes += usize::try_from(*size).unwrap_or(0);
            if last.is_some() && bytes > self.max_bytes {
                break;
            }
            last = Some(*id);
        }
        let events = match last {
            Some(last) => self.visible(last).order(events::id.asc()).select(StoredEvent::as_select()).load(conn)?,
            None => Vec::new(),
        };
        let more = sizes.len() as i64 == self.max_rows || last != sizes.last().map(|(id, _)| *id);
        // Read after the events: a prune that committed in between is then seen here, so
        // a page it emptied is reported as expired rather than passed off as complete.
        let pruned_through: i64 = outbox_watermark::table
            .select(outbox_watermark::pruned_through)
            .first::<i64>(conn)
            .optional()?
            .unwrap_or(0);
        if self.after < pruned_through {
            return Ok(Replay::Expired { pruned_through });
        }
        Ok(Replay::Events { events, more })
    }
}
