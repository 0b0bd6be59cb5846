//! Reading the outbox back: what the EventRelay tails, and what a live-updates subscriber
//! resuming from an event id is replayed.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{
    outbox::Outbox,
    schema::{events, outbox_watermark},
    DbConnection, UseCase,
};
use crate::error::AppError;

#[derive(Debug, Clone, Queryable)]
pub struct StoredEvent {
    pub id: i64,
    pub topic: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub payload: String,
    pub origin: Option<String>,
    pub created_at: NaiveDateTime,
}

type StoredEventColumns =
    (events::id, events::topic, events::kind, events::user_id, events::payload, events::origin, events::created_at);
const STORED_EVENT_COLUMNS: StoredEventColumns =
    (events::id, events::topic, events::kind, events::user_id, events::payload, events::origin, events::created_at);

/// The id of the newest event (0 when there is none): where a new tail starts.
pub struct LatestEventId;

impl UseCase for LatestEventId {
    type Output = i64;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<i64, AppError> {
        Ok(events::table.select(diesel::dsl::max(events::id)).first::<Option<i64>>(conn)?.unwrap_or(0))
    }
}

/// Events after `after`, oldest first, at most `limit`.
pub struct EventsAfter {
    pub after: i64,
    pub limit: i64,
}

impl UseCase for EventsAfter {
    type Output = Vec<StoredEvent>;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Vec<StoredEvent>, AppError> {
        Ok(events::table
            .filter(events::id.gt(self.after))
            .order(events::id.asc())
            .limit(self.limit)
            .select(STORED_EVENT_COLUMNS)
            .load(conn)?)
    }
}

/// One page of a replay: events on `topics` with `after < id <= through`, oldest first.
pub struct ReplayPage {
    pub after: i64,
    pub through: i64,
    pub topics: Vec<&'static str>,
    /// Whose private events to read: `Some(user)` reads public events and that user's,
    /// `None` public ones only; `all_private` (a role that sees every order) reads all.
    pub owner: Option<String>,
    pub all_private: bool,
    pub limit: i64,
}

#[derive(Debug)]
pub enum Replay {
    Events(Vec<StoredEvent>),
    /// Retention already pruned events after `after`: a gap-free replay is impossible.
    Expired {
        pruned_through: i64,
    },
}

impl UseCase for ReplayPage {
    type Output = Replay;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Replay, AppError> {
        let mut query = events::table
            .filter(events::id.gt(self.after))
            .filter(events::id.le(self.through))
            .filter(events::topic.eq_any(self.topics))
            .into_boxed();
        if !self.all_private {
            query = match self.owner {
                Some(owner) => query.filter(events::user_id.is_null().or(events::user_id.eq(owner))),
                None => query.filter(events::user_id.is_null()),
            };
        }
        let events = query.order(events::id.asc()).limit(self.limit).select(STORED_EVENT_COLUMNS).load(conn)?;
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
        Ok(Replay::Events(events))
    }
}
