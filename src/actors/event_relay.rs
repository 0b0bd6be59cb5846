//! The EventRelay tails the transactional outbox and forwards what it reads. For now its
//! one consumer is the Cache: a replica invalidates its own cache synchronously when it
//! writes, and learns of every other replica's writes here, within one poll interval.

use std::time::Duration;

use actix::{fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Supervised};
use uuid::Uuid;

use super::{
    cache::{CacheClient, CacheKey},
    chaos::crashed,
    db_executor::DbGateway,
    relay_watch::RelayProgress,
    report::{ActorReport, GetActorReport},
    supervision::{guarded, Guarded, PanicPayload, RestartReporter},
    Crash,
};
use crate::db::{
    events::{EventsAfter, LatestEventId, StoredEvent},
    outbox::topic,
};

const ACTOR: &str = "event_relay";
/// Events read per poll; a longer backlog is read on the following polls.
const BATCH: i64 = 1000;

pub struct EventRelay {
    /// This replica: its own events were acted on when written.
    origin: String,
    db: DbGateway,
    cache: CacheClient,
    interval: Duration,
    /// The last event handled; `None` until the tail's start is known.
    last_id: Option<i64>,
    polling: bool,
    reporter: RestartReporter,
    progress: RelayProgress,
}

impl EventRelay {
    /// `start_after` is the newest event id when the service started (its cache empty).
    pub fn new(
        origin: Uuid,
        db: DbGateway,
        cache: CacheClient,
        interval: Duration,
        start_after: i64,
        reporter: RestartReporter,
    ) -> Self {
        Self {
            origin: origin.to_string(),
            db,
            cache,
            interval,
            last_id: Some(start_after),
            polling: false,
            reporter,
            progress: RelayProgress::default(),
        }
    }

    /// Makes the relay's progress visible in metrics (lag, last success).
    pub fn watched_by(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.progress = RelayProgress::new(metrics);
        self
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            return;
        }
        self.polling = true;
        let db = self.db.clone();
        let after = self.last_id;
        ctx.spawn(
            wrap_future(async move {
                match after {
                    // Start again at the tail (after a restart, which also emptied the cache).
                    None => db.run(LatestEventId).await.map(|latest| (latest, Vec::new())),
                    Some(after) => db.run(EventsAfter { after, limit: BATCH }).await.map(|events| (after, events)),
                }
            })
            .map(|outcome, act: &mut Self, ctx| {
                guarded(act, ctx, |act, _| {
                    act.polling = false;
                    match outcome {
                        Ok((start, events)) => {
                            act.progress.succeeded(events.len());
                            act.forward(start, &events);
                        }
                        Err(error) => act.progress.failed(&error),
                    }
                });
            }),
        );
    }

    fn forward(&mut self, start: i64, events: &[StoredEvent]) {
        let mut last = start;
        for event in events {
            last = last.max(event.id);
            if event.origin.as_deref() == Some(self.origin.as_str()) {
                continue;
            }
            if let Some(key) = invalidated_by(event) {
                self.cache.invalidate(key);
            }
        }
        self.last_id = Some(last);
    }
}

/// The cache key an event makes stale, if any.
fn invalidated_by(event: &StoredEvent) -> Option<CacheKey> {
    match event.topic.as_str() {
        topic::PRODUCTS => {
            let payload: serde_json::Value = serde_json::from_str(&event.payload).ok()?;
            payload["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()).map(CacheKey::Product)
        }
        topic::USERS => event.user_id.as_deref().and_then(|id| Uuid::parse_str(id).ok()).map(CacheKey::User),
        _ => None,
    }
}

impl Actor for EventRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.polling = false;
        guarded(self, ctx, |act, ctx| {
            ctx.run_interval(act.interval, |act, ctx| {
                guarded(act, ctx, |act, ctx| {
                    act.progress.tick();
                    act.poll(ctx);
                });
            });
        });
    }
}

impl Guarded for EventRelay {
    fn on_panic(&mut self, payload: &PanicPayload) {
        self.reporter.report(ACTOR, payload);
    }
}

impl Supervised for EventRelay {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Events may have been missed mid-panic: everything cached could be stale.
        guarded(self, ctx, |act, _| {
            act.last_id = None;
            act.cache.clear();
        });
    }
}

impl Handler<GetActorReport> for EventRelay {
    type Result = MessageResult<GetActorReport>;
    fn handle(&mut self, _msg: GetActorReport, ctx: &mut Context<Self>) -> Self::Result {
        let report = guarded(self, ctx, |act, _| {
            let interval_ms = u64::try_from(act.interval.as_millis()).unwrap_or(u64::MAX);
            ActorReport::running(ACTOR, act.progress.state(act.last_id, interval_ms))
        });
        MessageResult(report.unwrap_or_else(|| ActorReport::unresponsive(ACTOR, "panicked while reporting")))
    }
}

impl Handler<Crash> for EventRelay {
    type Result = Result<(), crate::error::AppError>;
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, |_, _| msg.detonate()).ok_or_else(|| crashed(ACTOR))
    }
}
