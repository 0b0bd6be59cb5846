//! Pruning what is kept only for a while: idempotency keys, outbox events, old failed logins.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::{
    schema::{events, idempotency_keys, login_failures},
    DbConnection,
};
use crate::{actors::UseCase, error::AppError};

pub struct PruneExpired {
    pub idempotency_keys_before: NaiveDateTime,
    pub events_before: NaiveDateTime,
    pub login_failures_before: NaiveDateTime,
    /// NATS publishing is on: events it has not published yet are kept, however old.
    pub keep_unpublished_events: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub idempotency_keys: usize,
    pub events: usize,
    pub login_failures: usize,
}

impl UseCase for PruneExpired {
    type Output = Pruned;
    fn run(self, conn: &mut DbConnection) -> Result<Pruned, AppError> {
        Ok(Pruned {
            idempotency_keys: diesel::delete(
                idempotency_keys::table.filter(idempotency_keys::created_at.lt(self.idempotency_keys_before)),
            )
            .execute(conn)?,
            events: {
                let newest_prunable = if self.keep_unpublished_events {
                    super::nats_publisher::published_through(conn)?
                } else {
                    i64::MAX
                };
                diesel::delete(
                    events::table
                        .filter(events::created_at.lt(self.events_before))
                        .filter(events::id.le(newest_prunable)),
                )
                .execute(conn)?
            },
            login_failures: diesel::delete(
                login_failures::table.filter(login_failures::failed_at.lt(self.login_failures_before)),
            )
            .execute(conn)?,
        })
    }
}
