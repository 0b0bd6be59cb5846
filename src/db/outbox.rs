//! The transactional outbox: events appended in the same transaction as the change they
//! describe. On PostgreSQL, appenders take a transaction-scoped advisory lock first, so
//! ids are handed out in commit order and a reader tailing `id > last` never skips a row
//! that commits later. SQLite writers are serialised by `BEGIN IMMEDIATE` already.
//!
//! Readers learn of new events without waiting for a poll: on PostgreSQL the appending
//! transaction also sends a `NOTIFY` (delivered to every replica at commit), and on this
//! replica the DbExecutor wakes the relay as soon as a use case that appended returns.
//!
//! Every use case is handed an [`Outbox`]: the attribution of the events it appends, and
//! the record of whether it appended any. Nothing about a use case is ambient state.

use std::sync::Arc;

use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::{schema::events, DbConnection};
use crate::{domain::clock, error::AppError};

const OUTBOX_LOCK_KEY: i64 = 0x5354_4f52_4f55_5442; // "STOROUTB"
/// The PostgreSQL notification channel that says "the outbox has new events".
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

    /// Appends events; call it last in a write transaction, to hold the lock briefly.
    pub fn append(&mut self, conn: &mut DbConnection, new_events: Vec<NewEvent>) -> Result<(), AppError> {
        if new_events.is_empty() {
            return Ok(());
        }
        if matches!(conn, DbConnection::Postgres(_)) {
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})")).execute(conn)?;
        }
        let now = clock::now();
        let (origin, request_id) = match &self.attribution {
            Some(who) => (Some(who.origin.to_string()), who.request_id.as_deref().map(str::to_owned)),
            None => (None, None),
        };
        for event in new_events {
            diesel::insert_into(events::table)
                .values((
                    events::topic.eq(event.topic),
                    events::kind.eq(event.kind),
                    events::user_id.eq(event.user_id),
                    events::payload.eq(event.payload.to_string()),
                    events::origin.eq(&origin),
                    events::created_at.eq(now),
                    events::request_id.eq(&request_id),
                ))
                .execute(conn)?;
        }
        if matches!(conn, DbConnection::Postgres(_)) {
            diesel::sql_query(format!("NOTIFY {NOTIFY_CHANNEL}")).execute(conn)?;
        }
        self.appended = true;
        Ok(())
    }
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
