//! Every supervised actor's name, written once: it labels the actor's logs, metrics
//! (`actor_restarts_total`, `actor_backing_off`), its row in the actors API, its restart
//! history, readiness checks and the chaos endpoint's `actor`.

pub const DB_EXECUTOR: &str = "db_executor";
pub const DB_PROBE: &str = "db_probe";
pub const HEALTH: &str = "health";
pub const CACHE: &str = "cache";
pub const RATE_LIMITER: &str = "rate_limiter";
pub const JANITOR: &str = "janitor";
pub const EVENT_RELAY: &str = "event_relay";
pub const EVENT_HUB: &str = "event_hub";
pub const NATS_PUBLISHER: &str = "nats_publisher";
pub const PASSWORD_HASHER: &str = "password_hasher";

/// Every one of them, in the order the actors API and the metrics list them.
pub const ALL: [&str; 10] = [
    DB_EXECUTOR,
    DB_PROBE,
    HEALTH,
    CACHE,
    RATE_LIMITER,
    JANITOR,
    EVENT_RELAY,
    EVENT_HUB,
    NATS_PUBLISHER,
    PASSWORD_HASHER,
];
