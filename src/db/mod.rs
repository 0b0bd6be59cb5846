//! Everything that speaks SQL. Only DbExecutor threads call into this module.

pub mod connection;
pub mod migrations;
pub mod schema;
pub mod users;

pub use connection::{build_pool, ConnectionManager, DbConnection, DbPool};
