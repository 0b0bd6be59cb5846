//! The transactional outbox: events appended in the same transaction as the change they
//! describe, tailed by readers with `id > last`, which is gap-free only if ids are handed
//! out in commit order.
//!
//! On PostgreSQL the table's id default draws each id under a transaction-scoped advisory
//! lock (migration `outbox_commit_order`), held until COMMIT. The lock is taken by the
//! first event a transaction inserts, so writers append their events in ONE statement as
//! the last thing before COMMIT (`idempotency::run_once` stores its answer first): the
//! serialised part of a write is that INSERT and the COMMIT's WAL flush, not the
//! transaction. The cost: appending transactions commit one at a time database-wide, so
//! at most about 1 / (one INSERT round trip + one WAL flush) of them per second. Rows that
//! were never committed leave holes in the ids, which readers simply never see. SQLite
//! writers are serialised by `BEGIN IMMEDIATE` already.
//!
//! Readers learn of new events without waiting for a poll: on PostgreSQL a trigger sends a
//! `NOTIFY` with the insert (delivered to every replica at commit), and on this replica
//! the DbExecutor wakes the relay as soon as a use case that appended returns.
//!
//! Every use case is handed an [`Outbox`]: the attribution of the events it appends, and
//! the record of whether it appended any. Nothing about a use case is ambient state.

use std::sync::Arc;

use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::{schema::events, DbConnection};
use crate::{domain::clock, error::AppError};

/// The PostgreSQL notification channel that says "the outbox has new events" (sent by the
/// `events_notify` trigger of migration `outbox_commit_order`, which names it too).
pub const NOTIFY_CHANNEL: &str = "storefront_outbox";

/// Who writes the events a use case appends: the replica, and the request that caused
/// them.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub origin: Uuid,
    pub request_id: Option<Arc<str>>,
}

/// The outbox as one use case sees it: appends carry its attribution, and it remembers
/// whether anything was appended, so the caller can wake the relay (a rolled-back append
/// only costs a needless poll).
#[derive(Debug, Default)]
pub struct Outbox {
    /// `None` outside a replica (the CLI): the events name no origin and no request.
    attribution: Option<Attribution>,
    appended: bool,
}

impl Outbox {
    pub fn attributed(who: Attribution) -> Self {
        Self { attribution: Some(who), appended: false }
    }

    /// For work done outside a running replica, e.g. by the CLI.
    pub fn unattributed() -> Self {
        Self::default()
    }

    pub fn appended(&self) -> bool {
        self.appended
    }

    /// Appends events in one INSERT; call it last in a write transaction (see the module
    /// docs: on PostgreSQL it takes the commit-order lock).
    pub fn append(&mut self, conn: &mut DbConnection, new_events: Vec<NewEvent>) -> Result<(), AppError> {
        if new_events.is_empty() {
            return Ok(());
        }
        let created_at = clock::now();
        let (origin, request_id) = match &self.attribution {
            Some(who) => (Some(who.origin.to_string()), who.request_id.as_deref().map(str::to_owned)),
            None => (None, None),
        };
        let rows: Vec<EventRow> = new_events
            .into_iter()
            .map(|event| EventRow {
                topic: event.topic,
                kind: event.kind,
                user_id: event.user_id,
                payload: event.payload.to_string(),
                origin: origin.clone(),
                created_at,
                request_id: request_id.clone(),
            })
            .collect();
        // A multi-row INSERT is not available on the multi-backend connection.
        let insert = diesel::insert_into(events::table).values(&rows);
        match conn {
            DbConnection::Postgres(conn) => insert.execute(conn)?,
            DbConnection::Sqlite(conn) => insert.execute(conn)?,
        };
        self.appended = true;
        Ok(())
    }
}

#[derive(Insertable)]
#[diesel(table_name = events)]
struct EventRow {
    topic: &'static str,
    kind: &'static str,
    user_id: Option<String>,
    payload: String,
    origin: Option<String>,
    created_at: chrono::NaiveDateTime,
    request_id: Option<String>,
}

pub mod topic {
    pub const PRODUCTS: &str = "products";
    pub const ORDERS: &str = "orders";
    pub const ACCOUNT: &str = "account";
    /// Changes to users: read by replicas to drop cached users (no personal data in it).
    pub const USERS: &str = "users";
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: &'static str,
    pub kind: &'static str,
    /// The owner of a private event (orders, account); `None` for public topics.
    pub user_id: Option<String>,
    pub payload: Value,
}

impl NewEvent {
    pub fn public(topic: &'static str, kind: &'static str, payload: impl serde::Serialize) -> Self {
        Self { topic, kind, user_id: None, payload: serde_json::to_value(payload).unwrap_or(Value::Null) }
    }

    pub fn private(topic: &'static str, kind: &'static str, owner: uuid::Uuid, payload: impl serde::Serialize) -> Self {
        Self {
            topic,
            kind,
            user_id: Some(owner.to_string()),
            payload: serde_json::to_value(payload).unwrap_or(Value::Null),
        }
    }
}
