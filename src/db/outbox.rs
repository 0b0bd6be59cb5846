//! The transactional outbox: events appended in the same transaction as the change they
//! describe, tailed by readers with `id > last`, which is gap-free only if ids are handed
//! out in commit order.
//!
//! On PostgreSQL ids are drawn in insert order, not commit order, and no lock makes
//! writers take turns: readers read no further than the horizon (`outbox_horizon`), below
//! which every event that will ever commit is visible. Writers append their events in ONE
//! statement as the last thing before COMMIT (`idempotency::run_once` stores its answer
//! first): then two transactions that touched the same row get ids in their commit order.
//! Rows that were never committed leave holes in the ids, which readers simply never see.
//! SQLite writers are serialised by `BEGIN IMMEDIATE`, so there ids follow commit order.
//!
//! Readers learn of new events without waiting for a poll: this replica's DbExecutor
//! wakes its relay as soon as a use case that appended returns, and on PostgreSQL the
//! replica then sends a `NOTIFY` (outside the writing transaction, see `outbox_listener`)
//! that wakes every other replica's relay.
//!
//! Every use case is handed an [`Outbox`]: the attribution of the events it appends, and
//! the record of what it appended — whether anything, and which cache entries those events
//! make stale, so the writer drops them before it is answered. Nothing about a use case is
//! ambient state.

use std::sync::Arc;

use tokio::sync::Notify;

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Nullable, Text, Timestamp},
};
use serde_json::Value;
use uuid::Uuid;

use super::{kept_prepared::KeepPrepared, schema::events, DbConnection};
use crate::{
    db::DbError,
    domain::{cache_key::CacheKey, clock},
};

/// The PostgreSQL notification channel that says "the outbox has new events" (sent after
/// commits by each replica's `outbox_listener`).
pub const NOTIFY_CHANNEL: &str = "storefront_outbox";

/// What a use case that appended sets off, once it returned: this replica's relay reads
/// at once, and (PostgreSQL) the listener tells the other replicas. Each is a `Notify`,
/// so a burst of commits costs one read and one announcement.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignals {
    pub relay: Arc<Notify>,
    pub announce: Arc<Notify>,
}

impl OutboxSignals {
    pub fn appended(&self) {
        self.relay.notify_one();
        self.announce.notify_one();
    }
}

/// Who writes the events a use case appends: the replica, and the request that caused
/// them.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub origin: Uuid,
    pub request_id: Option<Arc<str>>,
}

/// The outbox as one use case sees it: appends carry its attribution, and it remembers
/// whether anything was appended, so the caller can wake the relay (a rolled-back append
/// only costs a needless poll), and the cache entries the appended events make stale.
#[derive(Debug, Default)]
pub struct Outbox {
    /// `None` outside a replica (the CLI): the events name no origin and no request.
    attribution: Option<Attribution>,
    appended: bool,
    stale: Vec<CacheKey>,
}

impl Outbox {
    pub fn attributed(who: Attribution) -> Self {
        Self { attribution: Some(who), ..Self::default() }
    }

    /// For work done outside a running replica, e.g. by the CLI.
    pub fn unattributed() -> Self {
        Self::default()
    }

    pub fn appended(&self) -> bool {
        self.appended
    }

    /// The cache entries the appended events make stale (valid once the use case committed).
    pub fn take_stale(&mut self) -> Vec<CacheKey> {
        std::mem::take(&mut self.stale)
    }

    /// Appends events in one INSERT; call it last in a write transaction, after every row
    /// lock is taken (see the module docs).
    pub fn append(&mut self, conn: &mut DbConnection, new_events: Vec<NewEvent>) -> Result<(), DbError> {
        if new_events.is_empty() {
            return Ok(());
        }
        self.stale.extend(
            new_events
                .iter()
                .filter_map(|event| made_stale(event.topic, event.user_id.as_deref(), || Some(&event.payload))),
        );
        let created_at = clock::now();
        let (origin, request_id) = match &self.attribution {
            Some(who) => (Some(who.origin.to_string()), who.request_id.as_deref().map(str::to_owned)),
            None => (None, None),
        };
        match conn {
            // One shape whatever the number of events (an array per column, not a row of
            // binds per event), so each connection keeps one prepared statement for it.
            DbConnection::Postgres(conn) => {
                let mut columns = EventColumns::with_capacity(new_events.len());
                for event in new_events {
                    columns.topics.push(event.topic);
                    columns.kinds.push(event.kind);
                    columns.owners.push(event.user_id);
                    columns.payloads.push(event.payload.to_string());
                }
                diesel::sql_query(INSERT_EVENTS)
                    .bind::<Array<Text>, _>(columns.topics)
                    .bind::<Array<Text>, _>(columns.kinds)
                    .bind::<Array<Nullable<Text>>, _>(columns.owners)
                    .bind::<Array<Text>, _>(columns.payloads)
                    .bind::<Nullable<Text>, _>(origin)
                    .bind::<Nullable<Text>, _>(request_id)
                    .bind::<Timestamp, _>(created_at)
                    .keep_prepared()
                    // Loaded, not executed, so that it is kept prepared (see `kept_prepared`).
                    .load::<AppendedId>(conn)?;
            }
            // A multi-row insert takes a path of diesel's own there.
            DbConnection::Sqlite(conn) => {
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
                diesel::insert_into(events::table).values(&rows).execute(conn)?;
            }
        }
        self.appended = true;
        Ok(())
    }
}

/// The events INSERT on PostgreSQL: `$1`–`$4` one array per column, `$5`–`$7` what every
/// event of the transaction shares; ids are drawn in the arrays' order.
const INSERT_EVENTS: &str = "INSERT INTO events (topic, kind, user_id, payload, origin, request_id, created_at) \
     SELECT topic, kind, user_id, payload, $5, $6, $7 \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
     WITH ORDINALITY AS appended (topic, kind, user_id, payload, position) \
     ORDER BY position RETURNING id";

struct EventColumns {
    topics: Vec<&'static str>,
    kinds: Vec<&'static str>,
    owners: Vec<Option<String>>,
    payloads: Vec<String>,
}

impl EventColumns {
    fn with_capacity(events: usize) -> Self {
        Self {
            topics: Vec::with_capacity(events),
            kinds: Vec::with_capacity(events),
            owners: Vec::with_capacity(events),
            payloads: Vec::with_capacity(events),
        }
    }
}

#[derive(QueryableByName)]
struct AppendedId {
    #[allow(dead_code)] // returned only so that the INSERT is loaded, so kept prepared
    #[diesel(sql_type = BigInt)]
    id: i64,
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

/// The cache entry an event makes stale, if any: a product's by the id in its payload, a
/// user's by the user it belongs to. `payload` is asked for only for a product event, so a
/// reader of stored events parses no other payload.
pub fn made_stale<P: std::borrow::Borrow<Value>>(
    topic: &str,
    user_id: Option<&str>,
    payload: impl FnOnce() -> Option<P>,
) -> Option<CacheKey> {
    match topic {
        topic::PRODUCTS => {
            let payload = payload()?;
            payload.borrow()["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()).map(CacheKey::Product)
        }
        topic::USERS => user_id.and_then(|id| Uuid::parse_str(id).ok()).map(CacheKey::User),
        _ => None,
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
