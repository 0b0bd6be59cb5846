//! The supervised actors that own the service's state.

pub mod admission;
pub mod cache;
pub mod chaos;
pub mod db_executor;
pub mod event_relay;
pub mod health;
pub mod janitor;
pub mod nats_publisher;
pub mod rate_limiter;
pub mod supervision;

pub use chaos::Crash;
pub use db_executor::{DbGateway, UseCase};
