//! The Prometheus registry of one running app. Each app owns its own registry (tests run
//! several apps in one process), and collectors are atomics, so sharing it is lock-free.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub actor_restarts: IntCounterVec,
    /// 1 while the actor backs off (restarted too often), 0 while it runs normally.
    pub actor_backing_off: IntGaugeVec,
    pub db_in_flight: IntGauge,
    pub db_workers_alive: IntGauge,
    pub db_shed: IntCounterVec,
    pub readiness: IntGaugeVec,
    pub cache_requests: IntCounterVec,
    pub cache_loads: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub cache_bypass: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_keys: IntGauge,
    pub rate_limiter_fail_open: IntCounter,
    /// 1 for the backend deciding now: `redis`, or `local` (also while Redis is down).
    pub rate_limiter_backend: IntGaugeVec,
    pub rate_limiter_fallbacks: IntCounter,
    /// Lease traffic between limiter shards, by event.
    pub rate_limiter_leases: IntCounterVec,
    pub rate_limiter_redis_calls: IntCounterVec,
    pub http_connections: IntGauge,
    pub ws_connections: IntGauge,
    pub ws_events_sent: IntCounterVec,
    pub ws_disconnects: IntCounterVec,
    pub ws_refused: IntCounterVec,
    pub ws_buffered_bytes: IntGauge,
    pub event_delivery: Histogram,
    pub nats_published: IntCounter,
    pub nats_publish_lag: IntGauge,
    /// argon2id runs completed, by `operation`: `hash` (a new password) or `verify`.
    pub password_hasher_runs: IntCounterVec,
    /// The database breaker and the background tails.
    pub ops: OpsMetrics,
}

/// Why a live-updates connection ended: the `reason` label of `ws_disconnects_total`.
pub mod disconnect_reason {
    pub const CLIENT: &str = "client";
    pub const SLOW_CONSUMER: &str = "slow_consumer";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const USER_DELETED: &str = "user_deleted";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const SHUTDOWN: &str = "shutdown";
    pub const PROTOCOL: &str = "protocol";
    pub const FRAME_TOO_BIG: &str = "frame_too_big";
    pub const TOKEN_REVOKED: &str = "token_revoked";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const ALL: [&str; 10] = [
        CLIENT,
        SLOW_CONSUMER,
        TOKEN_EXPIRED,
        USER_DELETED,
        HEARTBEAT,
        SHUTDOWN,
        PROTOCOL,
        FRAME_TOO_BIG,
        TOKEN_REVOKED,
        RATE_LIMITED,
    ];
}

/// Why a live-updates handshake was refused: the `reason` label of `ws_refused_total`.
pub mod refusal_reason {
    /// `WS_MAX_ANONYMOUS_PER_ADDRESS` connections without a token from that address.
    pub const PER_ADDRESS: &str = "per_address";
    /// `WS_MAX_CONNECTIONS_PER_USER` connections of that user.
    pub const PER_USER: &str = "per_user";
    /// `WS_MAX_CONNECTIONS` on this replica (or it is shutting down).
    pub const TOTAL: &str = "total";
    /// The lower cap the open-file limit leaves.
    pub const DESCRIPTORS: &str = "descriptors";
    pub const ALL: [&str; 4] = [PER_ADDRESS, PER_USER, TOTAL, DESCRIPTORS];
}

/// Registration only fails for a duplicate or malformed name; the names below are fixed
/// and distinct, so a failure is a programming error caught by every test run.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    #[allow(clippy::expect_used)]
    registry.register(Box::new(collector.clone())).expect("metric names are unique and valid");
    collector
}

#[allow(clippy::expect_used)] // the option literals below are valid; see `register`
impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("storefront".into()), None).expect("static prefix is valid");
        let http_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests answered"),
                &["method", "route", "status"],
            )
            .expect("valid metric"),
        );
        let http_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["method", "route"],
            )
            .expect("valid metric"),
        );
        let actor_restarts = register(
            &registry,
            IntCounterVec::new(Opts::new("actor_restarts_total", "Actors restarted after a panic"), &["actor"])
                .expect("valid metric"),
        );
        let actor_backing_off = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("actor_backing_off", "1 while an actor restarts too often and its restarts back off"),
                &["actor"],
            )
            .expect("valid metric"),
        );
        let db_in_flight = register(
            &registry,
            IntGauge::new("db_in_flight", "Database requests queued or running").expect("valid metric"),
        );
        let db_workers_alive = register(
            &registry,
            IntGauge::new("db_workers_alive", "DbExecutor threads able to serve").expect("valid metric"),
        );
        let db_shed = register(
            &registry,
            IntCounterVec::new(Opts::new("db_shed_total", "Database requests refused with 503"), &["reason"])
                .expect("valid metric"),
        );
        let readiness = register(
            &registry,
            IntGaugeVec::new(Opts::new("readiness_check", "1 when a readiness check passes"), &["check"])
                .expect("valid metric"),
        );
        let cache_requests = register(
            &registry,
            IntCounterVec::new(Opts::new("cache_requests_total", "Cache lookups by outcome"), &["cache", "result"])
                .expect("valid metric"),
        );
        let cache_loads = register(
            &registry,
            IntCounterVec::new(Opts::new("cache_loads_total", "Cache loads that reached the database"), &["cache"])
                .expect("valid metric"),
        );
        let cache_entries = register(
            &registry,
            IntGaugeVec::new(Opts::new("cache_entries", "Entries held by the cache"), &["cache"])
                .expect("valid metric"),
        );
        let cache_bypass = register(
            &registry,
            IntCounterVec::new(
                Opts::new("cache_bypass_total", "Reads that went to the database because the cache could not answer"),
                &["cache", "reason"],
            )
            .expect("valid metric"),
        );
        let rate_limited = register(
            &registry,
            IntCounterVec::new(Opts::new("rate_limited_total", "Requests refused with 429"), &["policy"])
                .expect("valid metric"),
        );
        let rate_limit_keys = register(
            &registry,
            IntGauge::new("rate_limit_keys", "Client buckets tracked by the rate limiter").expect("valid metric"),
        );
        let rate_limiter_fail_open = register(
            &registry,
            IntCounter::new("rate_limiter_fail_open_total", "Requests let through because the limiter did not answer")
                .expect("valid metric"),
        );
        let rate_limiter_backend = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("rate_limiter_backend", "1 for the rate limiter's backend in force (redis or local)"),
                &["backend"],
            )
            .expect("valid metric"),
        );
        let rate_limiter_fallbacks = register(
            &registry,
            IntCounter::new(
                "rate_limiter_fallbacks_total",
                "Times Redis failed and this replica's rate limiter fell back to its own ledgers",
            )
            .expect("valid metric"),
        );
        let rate_limiter_leases = register(
            &registry,
            IntCounterVec::new(
                Opts::new("rate_limiter_leases_total", "Rate-limit lease traffic between this replica's shards"),
                &["event"],
            )
            .expect("valid metric"),
        );
        let rate_limiter_redis_calls = register(
            &registry,
            IntCounterVec::new(
                Opts::new("rate_limiter_redis_calls_total", "Calls of the rate limiter to Redis, by outcome"),
                &["result"],
            )
            .expect("valid metric"),
        );
        let http_connections = register(
            &registry,
            IntGauge::new("http_connections", "Open HTTP connections (a live-updates one leaves at its upgrade)")
                .expect("valid metric"),
        );
        let ws_connections = register(
            &registry,
            IntGauge::new("ws_connections", "Open live-updates WebSocket connections").expect("valid metric"),
        );
        let ws_events_sent = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ws_events_sent_total", "Events written to WebSocket subscribers"),
                &["topic"],
            )
            .expect("valid metric"),
        );
        let ws_disconnects = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ws_disconnects_total", "WebSocket connections ended, by reason"),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let ws_refused = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ws_refused_total", "WebSocket handshakes refused for a connection limit, by limit"),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let ws_buffered_bytes = register(
            &registry,
            IntGauge::new(
                "ws_buffered_bytes",
                "Bytes held for WebSocket connections now: frames queued to send and client frames arriving",
            )
            .expect("valid metric"),
        );
        let event_delivery = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("event_delivery_seconds", "From an event's commit to its write to a subscriber")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )
            .expect("valid metric"),
        );
        // Every series exists from the start, so dashboards and alerts see zeros, not gaps.
        for topic in crate::domain::live::Topic::ALL {
            ws_events_sent.with_label_values(&[topic.name()]);
        }
        for reason in disconnect_reason::ALL {
            ws_disconnects.with_label_values(&[reason]);
        }
        for reason in refusal_reason::ALL {
            ws_refused.with_label_values(&[reason]);
        }
        let ops = OpsMetrics::register(&registry);
        let nats_published = register(
            &registry,
            IntCounter::new("nats_published_total", "Outbox events JetStream stored (duplicates not counted)")
                .expect("valid metric"),
        );
        let nats_publish_lag = register(
            &registry,
            IntGauge::new("nats_publish_lag_events", "Outbox events not yet acknowledged by JetStream")
                .expect("valid metric"),
        );
        let password_hasher_runs = register(
            &registry,
            IntCounterVec::new(
                Opts::new("password_hasher_runs_total", "argon2id runs the password hasher completed"),
                &["operation"],
            )
            .expect("valid metric"),
        );
        let metrics = Self {
            password_hasher_runs,
            http_connections,
            ws_connections,
            ws_events_sent,
            ws_disconnects,
            ws_refused,
            ws_buffered_bytes,
            event_delivery,
            registry,
            ops,
            nats_published,
            nats_publish_lag,
            cache_requests,
            cache_loads,
            cache_entries,
            cache_bypass,
            rate_limited,
            rate_limit_keys,
            rate_limiter_fail_open,
            rate_limiter_backend,
            rate_limiter_fallbacks,
            rate_limiter_leases,
            rate_limiter_redis_calls,
            http_requests,
            http_duration,
            actor_restarts,
            actor_backing_off,
            db_in_flight,
            db_workers_alive,
            db_shed,
            readiness,
        };
        metrics.start_at_zero();
        metrics
    }

    /// Every labelled series a dashboard or an alert relies on exists from start-up, at
    /// zero, before its first event (other modules add their own families the same way).
    fn start_at_zero(&self) {
        for policy in ["default", "auth"] {
            self.rate_limited.with_label_values(&[policy]);
        }
        for backend in ["redis", "local"] {
            self.rate_limiter_backend.with_label_values(&[backend]);
        }
        for event in [
            "asked",
            "granted",
            "tokens_granted",
            "settled",
            "recalled",
            "expired",
            "refused_locally",
            "evicted",
            "decided_without_ledger",
        ] {
            self.rate_limiter_leases.with_label_values(&[event]);
        }
        for result in ["ok", "failed"] {
            self.rate_limiter_redis_calls.with_label_values(&[result]);
        }
        for cache in ["products", "users"] {
            for result in ["hit", "miss", "coalesced"] {
                self.cache_requests.with_label_values(&[cache, result]);
            }
            for reason in ["restarted", "unavailable", "backing_off"] {
                self.cache_bypass.with_label_values(&[cache, reason]);
            }
            self.cache_loads.with_label_values(&[cache]);
            self.cache_entries.with_label_values(&[cache]);
        }
        for reason in ["saturated", "timeout", "overran", "backing_off"] {
            self.db_shed.with_label_values(&[reason]);
        }
        for check in ["database", "db_executor", "shutdown", "supervision"] {
            self.readiness.with_label_values(&[check]);
        }
        for operation in ["hash", "verify"] {
            self.password_hasher_runs.with_label_values(&[operation]);
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Metrics {
    /// Every family's current samples, for summaries computed in-process.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// Breaker states as `storefront_db_breaker_state` reports them.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

pub struct OpsMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub db_breaker_state: IntGauge,
    pub db_breaker_transitions: IntCounterVec,
    pub event_relay_lag_seconds: prometheus::Gauge,
    pub event_relay_last_success: prometheus::Gauge,
    pub janitor_last_success: prometheus::Gauge,
}

#[allow(clippy::expect_used)] // fixed, valid names and options; see `register`
impl OpsMetrics {
    fn register(registry: &Registry) -> Self {
        let db_breaker_state = register(
            registry,
            IntGauge::new("db_breaker_state", "Database circuit breaker: 0 closed, 1 open, 2 half-open")
                .expect("valid metric"),
        );
        let db_breaker_transitions = register(
            registry,
            IntCounterVec::new(Opts::new("db_breaker_transitions_total", "Database breaker state changes"), &["to"])
                .expect("valid metric"),
        );
        for state in BREAKER_STATES {
            db_breaker_transitions.with_label_values(&[state]);
        }
        let gauge =
            |name: &str, help: &str| register(registry, prometheus::Gauge::new(name, help).expect("valid metric"));
        Self {
            db_breaker_state,
            db_breaker_transitions,
            event_relay_lag_seconds: gauge(
                "event_relay_lag_seconds",
                "Seconds since the event relay last read the outbox successfully (grows while it stalls)",
            ),
            event_relay_last_success: gauge(
                "event_relay_last_success_timestamp_seconds",
                "Unix time of the event relay's last successful outbox poll",
            ),
            janitor_last_success: gauge(
                "janitor_last_success_timestamp_seconds",
                "Unix time of the janitor's last successful pruning run",
            ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
