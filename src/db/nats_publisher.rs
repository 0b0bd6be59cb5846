//! The NATS publisher's side of the database: the outbox events it has yet to publish,
//! its position (the last event id JetStream acknowledged) and the lease that lets one
//! replica at a time publish. The lease is a conditional UPDATE of one row, which is
//! atomic on both backends: it succeeds for the holder, or for anyone once it expired.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{
    outbox::Outbox,
    schema::{events, nats_publisher},
    DbConnection, UseCase,
};
use crate::db::DbError;

/// The publisher's row (the migration creates it).
const PUBLISHER: &str = "nats";

/// An outbox event as it is published.
#[derive(Debug, Clone, Queryable)]
pub struct OutboxEvent {
    pub id: i64,
    pub topic: String,
    pub kind: String,
    pub payload: String,
    pub request_id: Option<String>,
    pub created_at: NaiveDateTime,
}

/// Where publishing stands, as one replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Whether the asking replica holds the lease (and so may publish).
    pub held: bool,
    /// The last event id JetStream acknowledged.
    pub published_through: i64,
    /// Outbox events after it: what is still to be published.
    pub backlog: i64,
}

fn progress(conn: &mut DbConnection, held: bool) -> Result<Progress, DbError> {
    let published_through: i64 = nats_publisher::table
        .filter(nats_publisher::name.eq(PUBLISHER))
        .select(nats_publisher::published_through)
        .first(conn)?;
    let backlog: i64 = events::table.filter(events::id.gt(published_through)).count().get_result(conn)?;
    Ok(Progress { held, published_through, backlog })
}

/// Takes the lease for `holder` until `until` if it is free, expired or already
/// `holder`'s (a renewal), and reports the progress either way.
pub struct ClaimLease {
    pub holder: String,
    pub now: NaiveDateTime,
    pub until: NaiveDateTime,
}

impl UseCase for ClaimLease {
    type Output = Progress;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Progress, DbError> {
        use nats_publisher::{holder, lease_expires_at, name};
        let claimable = holder
            .is_null()
            .or(holder.eq(&self.holder))
            .or(lease_expires_at.is_null())
            .or(lease_expires_at.lt(self.now));
        let claimed = diesel::update(nats_publisher::table.filter(name.eq(PUBLISHER)).filter(claimable))
            .set((holder.eq(&self.holder), lease_expires_at.eq(self.until)))
            .execute(conn)?;
        progress(conn, claimed == 1)
    }
}

/// Progress without claiming anything: the backlog while NATS is out of reach.
pub struct ReadProgress;

impl UseCase for ReadProgress {
    type Output = Progress;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Progress, DbError> {
        progress(conn, false)
    }
}

/// Outbox events after `after` and no further than `through` (the outbox horizon), oldest
/// first, at most `limit`, and how many there are after `after` in all.
pub struct UnpublishedEvents {
    pub after: i64,
    pub through: i64,
    pub limit: i64,
}

pub struct Pending {
    pub events: Vec<OutboxEvent>,
    pub backlog: i64,
}

impl UseCase for UnpublishedEvents {
    type Output = Pending;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Pending, DbError> {
        let events = events::table
            .filter(events::id.gt(self.after))
            .filter(events::id.le(self.through))
            .order(events::id.asc())
            .limit(self.limit)
            .select((events::id, events::topic, events::kind, events::payload, events::request_id, events::created_at))
            .load(conn)?;
        let backlog = events::table.filter(events::id.gt(self.after)).count().get_result(conn)?;
        Ok(Pending { events, backlog })
    }
}

/// Records that JetStream acknowledged every event through `through`, renewing the lease
/// until `until`. Answers false, recording nothing, when `holder` no longer holds it.
pub struct RecordPublished {
    pub holder: String,
    pub through: i64,
    pub until: NaiveDateTime,
}

impl UseCase for RecordPublished {
    type Output = bool;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<bool, DbError> {
        use nats_publisher::{holder, lease_expires_at, name, published_through};
        let updated = diesel::update(nats_publisher::table.filter(name.eq(PUBLISHER)).filter(holder.eq(&self.holder)))
            .set((published_through.eq(self.through), lease_expires_at.eq(self.until)))
            .execute(conn)?;
        Ok(updated == 1)
    }
}

/// Hands the lease back (at shutdown), so another replica takes over at once.
pub struct ReleaseLease {
    pub holder: String,
}

impl UseCase for ReleaseLease {
    type Output = ();
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        use nats_publisher::{holder, lease_expires_at, name};
        diesel::update(nats_publisher::table.filter(name.eq(PUBLISHER)).filter(holder.eq(&self.holder)))
            .set((holder.eq(None::<String>), lease_expires_at.eq(None::<NaiveDateTime>)))
            .execute(conn)?;
        Ok(())
    }
}

/// The newest event id the janitor may prune: the publisher's position.
pub fn published_through(conn: &mut DbConnection) -> Result<i64, DbError> {
    Ok(nats_publisher::table
        .filter(nats_publisher::name.eq(PUBLISHER))
        .select(nats_publisher::published_through)
        .first::<i64>(conn)
        .optional()?
        .unwrap_or(0))
}
