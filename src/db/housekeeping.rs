//! Pruning what is kept only for a while: idempotency keys, outbox events, old failed logins
//! and credential changes that no longer count against any limit.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{
    outbox::Outbox,
    schema::{credential_changes, events, idempotency_keys, login_failures, outbox_watermark},
    DbConnection, UseCase,
};
use crate::db::DbError;

pub struct PruneExpired {
    pub idempotency_keys_before: NaiveDateTime,
    pub events_before: NaiveDateTime,
    pub login_failures_before: NaiveDateTime,
    /// Each account's own rows are pruned when it next changes a credential; these are the
    /// rows of accounts that have not since.
    pub credential_changes_before: NaiveDateTime,
    /// NATS publishing is on: events it has not published yet are kept, however old.
    pub keep_unpublished_events: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub idempotency_keys: usize,
    pub events: usize,
    pub login_failures: usize,
    pub credential_changes: usize,
}

impl UseCase for PruneExpired {
    type Output = Pruned;
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<Pruned, DbError> {
        Ok(Pruned {
            idempotency_keys: diesel::delete(
                idempotency_keys::table.filter(idempotency_keys::created_at.lt(self.idempotency_keys_before)),
            )
            .execute(conn)?,
            events: {
                // With NATS publishing on, an event is prunable only once it was published.
                let newest_prunable = if self.keep_unpublished_events {
                    super::nats_publisher::published_through(conn)?
                } else {
                    i64::MAX
                };
                prune_events(conn, self.events_before, newest_prunable)?
            },
            login_failures: diesel::delete(
                login_failures::table.filter(login_failures::failed_at.lt(self.login_failures_before)),
            )
            .execute(conn)?,
            credential_changes: diesel::delete(
                credential_changes::table.filter(credential_changes::changed_at.lt(self.credential_changes_before)),
            )
            .execute(conn)?,
        })
    }
}

/// Deletes events older than `before` and raises the watermark to the highest id deleted,
/// in one transaction, so a subscriber resuming below it learns that its replay has a gap.
fn prune_events(conn: &mut DbConnection, before: NaiveDateTime, newest_prunable: i64) -> Result<usize, DbError> {
    conn.write_transaction(|conn| {
        let expired = events::table.filter(events::created_at.lt(before)).filter(events::id.le(newest_prunable));
        let Some(highest) = expired.select(diesel::dsl::max(events::id)).first::<Option<i64>>(conn)? else {
            return Ok(0);
        };
        let deleted = diesel::delete(expired).execute(conn)?;
        diesel::update(outbox_watermark::table.filter(outbox_watermark::pruned_through.lt(highest)))
            .set(outbox_watermark::pruned_through.eq(highest))
            .execute(conn)?;
        Ok(deleted)
    })
}
