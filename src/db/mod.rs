//! Everything that speaks SQL. Only DbExecutor threads call into this module.

pub mod bootstrap;
pub mod catalog;
pub mod connection;
pub mod events;
pub mod housekeeping;
pub mod idempotency;
pub mod migrations;
pub mod nats_publisher;
pub mod outbox;
pub mod outbox_listener;
pub mod schema;
pub mod shop;
pub mod users;

pub use connection::{build_pool, ConnectionManager, DbConnection, DbPool};
