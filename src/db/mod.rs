//! Everything that speaks SQL. Only DbExecutor threads call into this module.

pub mod accounts;
pub mod bootstrap;
pub mod catalog;
pub mod connection;
pub mod error;
pub mod events;
pub mod housekeeping;
pub mod idempotency;
pub mod kept_prepared;
pub mod migrations;
pub mod nats_publisher;
pub mod orders;
pub mod outbox;
pub mod outbox_horizon;
pub mod outbox_listener;
pub mod schema;
pub mod use_case;
pub mod users;

pub use connection::{build_pool, ConnectionManager, DbConnection, DbPool};
pub use error::DbError;
pub use use_case::UseCase;
