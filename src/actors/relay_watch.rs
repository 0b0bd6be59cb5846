//! How the EventRelay's progress is made visible, so a relay that stalls says so: a
//! `warn` for each failed poll, `storefront_event_relay_lag_seconds` (time since the last
//! successful poll, growing while it stalls), the last success as a timestamp metric, and
//! its state in the actors API. Kept apart from the relay so the relay stays about relaying.

use std::{sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::metrics::Metrics;

#[derive(Default)]
pub struct RelayProgress {
    metrics: Option<Arc<Metrics>>,
    started: Option<Instant>,
    last_success: Option<(Instant, DateTime<Utc>)>,
    polls: u64,
    failures: u64,
    consecutive_failures: u64,
    events_read: u64,
    last_error: Option<String>,
}

impl RelayProgress {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), started: Some(Instant::now()), ..Self::default() }
    }

    pub fn succeeded(&mut self, events: usize) {
        let now = Utc::now();
        self.polls += 1;
        self.consecutive_failures = 0;
        self.events_read += super::report::as_u64(events);
        self.last_success = Some((Instant::now(), now));
        self.last_error = None;
        if let Some(metrics) = &self.metrics {
            metrics.ops.event_relay_last_success.set(now.timestamp_millis() as f64 / 1000.0);
            metrics.ops.event_relay_lag_seconds.set(0.0);
        }
    }

    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.polls += 1;
        self.failures += 1;
        self.consecutive_failures += 1;
        tracing::warn!(actor = super::names::EVENT_RELAY, %error, consecutive = self.consecutive_failures, "outbox poll failed; will retry");
        self.last_error = Some(error.to_string());
    }

    /// On every tick, successful or not: the lag grows while polls fail or hang.
    pub fn tick(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.ops.event_relay_lag_seconds.set(self.lag_seconds());
        }
    }

    fn lag_seconds(&self) -> f64 {
        self.last_success.map(|(at, _)| at).or(self.started).map_or(0.0, |since| since.elapsed().as_secs_f64())
    }

    pub fn state(&self, last_id: Option<i64>, interval_ms: u64) -> Value {
        json!({
            "last_event_id": last_id, "poll_interval_ms": interval_ms,
            "last_success_at": self.last_success.map(|(_, at)| at), "lag_seconds": self.lag_seconds(),
            "polls": self.polls, "failures": self.failures, "consecutive_failures": self.consecutive_failures,
            "events_read": self.events_read, "last_error": self.last_error,
        })
    }
}
