//! The Prometheus registry of one running app. Each app owns its own registry (tests run
//! several apps in one process), and collectors are atomics, so sharing it is lock-free.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The supervised actors whose restarts are counted.
pub const KNOWN_ACTORS: &[&str] =
    &["db_executor", "health", "cache", "rate_limiter", "janitor", "event_relay", "password_hasher"];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub actor_restarts: IntCounterVec,
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
        let metrics = Self {
            registry,
            cache_requests,
            cache_loads,
            cache_entries,
            cache_bypass,
            rate_limited,
            rate_limit_keys,
            rate_limiter_fail_open,
            http_requests,
            http_duration,
            actor_restarts,
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
        for actor in KNOWN_ACTORS {
            self.actor_restarts.with_label_values(&[actor]);
        }
        for policy in ["default", "auth"] {
            self.rate_limited.with_label_values(&[policy]);
        }
        for cache in ["products", "users"] {
            for result in ["hit", "miss", "coalesced"] {
                self.cache_requests.with_label_values(&[cache, result]);
            }
            for reason in ["restarted", "unavailable"] {
                self.cache_bypass.with_label_values(&[cache, reason]);
            }
            self.cache_loads.with_label_values(&[cache]);
            self.cache_entries.with_label_values(&[cache]);
        }
        for reason in ["saturated", "timeout", "overran"] {
            self.db_shed.with_label_values(&[reason]);
        }
        for check in ["database", "db_executor", "shutdown"] {
            self.readiness.with_label_values(&[check]);
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
