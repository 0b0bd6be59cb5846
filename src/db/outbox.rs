//! The transactional outbox: events appended in the same transaction as the change they
//! describe. On PostgreSQL, appenders take a transaction-scoped advisory lock first, so
//! ids are handed out in commit order and a reader tailing `id > last` never skips a row
//! that commits later. SQLite writers are serialised by `BEGIN IMMEDIATE` already.
//!
//! Readers learn of new events without waiting for a poll: on PostgreSQL the appending
//! transaction also sends a `NOTIFY` (delivered to every replica at commit), and on this
//! replica the DbExecutor wakes the relay as soon as a use case that appended returns.

use std::{
    cell::{Cell, RefCell},
    sync::Arc,
};

use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::{schema::events, DbConnection};
use crate::{domain::clock, error::AppError};

const OUTBOX_LOCK_KEY: i64 = 0x5354_4f52_4f55_5442; // "STOROUTB"
/// The PostgreSQL notification channel that says "the outbox has new events".
pub const NOTIFY_CHANNEL: &str = "storefront_outbox";

thread_local! {
    /// The running replica, set once on each of its DbExecutor threads (which belong to one
    /// app), so every event names the replica that wrote it without threading it through
    /// every use case. Outside a DbExecutor (the CLI) it is unset.
    static ORIGIN: Cell<Option<Uuid>> = const { Cell::new(None) };
    /// Whether the use case running on this thread appended events (see `take_appended`).
    static APPENDED: Cell<bool> = const { Cell::new(false) };
}

/// True once after a use case on this thread appended events: the DbExecutor asks after
/// each use case, to wake the relay. A rolled-back append only costs one needless poll.
pub fn take_appended() -> bool {
    APPENDED.with(|cell| cell.replace(false))
}

thread_local! {
    /// The request a DbExecutor thread is running a use case for, if any.
    static REQUEST_ID: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `work` with the events it appends attributed to request `id`; the attribution
/// ends with `work`, even when it panics.
pub fn with_request_id<T>(id: Option<Arc<str>>, work: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REQUEST_ID.with(|cell| cell.replace(None));
        }
    }
    REQUEST_ID.with(|cell| cell.replace(id));
    let _reset = Reset;
    work()
}

/// Marks this thread as a DbExecutor thread of replica `origin`.
pub fn set_origin_for_this_thread(origin: Uuid) {
    ORIGIN.with(|cell| cell.set(Some(origin)));
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

/// Appends events; call it last in a write transaction, to hold the lock briefly.
pub fn append(conn: &mut DbConnection, new_events: Vec<NewEvent>) -> Result<(), AppError> {
    if new_events.is_empty() {
        return Ok(());
    }
    if matches!(conn, DbConnection::Postgres(_)) {
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({OUTBOX_LOCK_KEY})")).execute(conn)?;
    }
    let now = clock::now();
    let origin = ORIGIN.with(Cell::get).map(|id| id.to_string());
    let request_id = REQUEST_ID.with(|cell| cell.borrow().as_deref().map(str::to_owned));
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
    APPENDED.with(|cell| cell.set(true));
    Ok(())
}
