//! Storefront: a shop backend built as an actix actor system over diesel.
//!
//! `app::Application` builds the whole service from a `config::Config`; the binary
//! (`main.rs`) and the black-box tests start it the same way.

pub mod actors;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod descriptors;
pub mod domain;
pub mod error_chain;
pub mod http;
pub mod metrics;
pub mod request_context;
pub mod state;
pub mod tail;
pub mod telemetry;
pub mod websocket;

pub use app::Application;
pub use config::Config;
