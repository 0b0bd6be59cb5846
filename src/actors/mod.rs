//! The supervised actors that own the service's state.

pub mod admission;
pub mod breaker;
pub mod cache;
pub mod chaos;
pub mod db_executor;
pub mod db_probe;
pub mod directory;
pub mod event_hub;
pub mod event_position;
pub mod event_relay;
pub mod failure;
pub mod health;
pub mod janitor;
pub mod names;
pub mod nats_publisher;
pub mod password_hasher;
pub mod pool_threads;
pub mod rate_limiter;
pub mod relay_watch;
pub mod report;
pub mod restarts;
pub mod shards;
pub mod supervision;

pub use chaos::Crash;
pub use db_executor::DbGateway;
