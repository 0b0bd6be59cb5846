//! The black-box suite, one test binary (so it links once): each module is one area of
//! the service, spoken to over HTTP/WebSocket (and as a process) like a client would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod accounts;
mod cache_and_limits;
mod cache_invalidation;
mod concurrency;
mod credentials;
mod event_position;
mod first_hour;
mod foundation;
mod hardening;
mod housekeeping;
mod idempotency;
mod live_abuse;
mod live_updates;
mod nats;
mod ops;
mod ops_dashboard_browser;
mod orders;
mod outbox;
mod process;
mod products;
mod rate_limits;
mod replicas;
mod supervision;
mod tail;
mod users;
