//! What request handlers share: immutable configuration and the addresses of the actors.
//! It sits below both `app` (which builds it) and `http` (which reads it), so neither
//! depends on the other for it.

use std::sync::Arc;

use actix::Addr;

use crate::{
    actors::{
        cache::CacheClient, directory::ActorDirectory, event_hub::EventHub, event_relay::EventRelay, health::Health,
        janitor::Janitor, nats_publisher::NatsPublisher, password_hasher::Passwords, rate_limiter::RateLimiterClient,
        DbGateway,
    },
    auth::tokens::TokenKeys,
    config::Config,
    metrics::Metrics,
};

/// What handlers share: immutable configuration and the addresses of the actors.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DbGateway,
    pub health: Addr<Health>,
    pub metrics: Arc<Metrics>,
    pub passwords: Passwords,
    pub tokens: Arc<TokenKeys>,
    pub cache: CacheClient,
    /// This worker's shard (see `actors::shards`).
    pub rate_limiter: RateLimiterClient,
    pub hub: Addr<EventHub>,
    pub event_relay: Addr<EventRelay>,
    /// Every actor's row for `GET /api/v1/ops/actors`.
    pub actors: ActorDirectory,
    /// For fault injection into the background actors.
    pub janitor: Addr<Janitor>,
    /// `None` unless NATS_URL is set.
    pub nats_publisher: Option<Addr<NatsPublisher>>,
}
