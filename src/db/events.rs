//! Reading the outbox back: what a replica tails to learn about other replicas' writes.

use diesel::prelude::*;

use super::{schema::events, DbConnection};
use crate::{actors::UseCase, error::AppError};

#[derive(Debug, Clone, Queryable)]
pub struct StoredEvent {
    pub id: i64,
    pub topic: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub payload: String,
    pub origin: Option<String>,
}

/// The id of the newest event (0 when there is none): where a new tail starts.
pub struct LatestEventId;

impl UseCase for LatestEventId {
    type Output = i64;
    fn run(self, conn: &mut DbConnection) -> Result<i64, AppError> {
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
    fn run(self, conn: &mut DbConnection) -> Result<Vec<StoredEvent>, AppError> {
        Ok(events::table
            .filter(events::id.gt(self.after))
            .order(events::id.asc())
            .limit(self.limit)
            .select((events::id, events::topic, events::kind, events::user_id, events::payload, events::origin))
            .load(conn)?)
    }
}
