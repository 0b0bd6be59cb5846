//! The EventRelay is the one reader of the transactional outbox. It tails `id > last`,
//! drops the cache entries every committed event made stale and hands the events to the
//! EventHub (live updates), this replica's own events included in both. It is the one
//! place that invalidates: a write that timed out (504) and commits later is covered as
//! surely as one that answered, and the writer's own read-your-writes waits for it
//! (`read_your_writes`).
//!
//! It reads as soon as it is woken — by this replica's DbExecutor after a use case that
//! appended events, and on PostgreSQL by a `NOTIFY` from any replica — and otherwise every
//! `EVENT_POLL_INTERVAL_MS`, which is the fallback (and the SQLite path across replicas).

use std::{sync::Arc, time::Duration};

use actix::{
    fut::wrap_future, Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult, Supervised,
};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    cache::{CacheClient, CacheKey},
    chaos::crashed,
    db_executor::DbGateway,
    event_hub::{EventHub, Publish},
    read_your_writes::ReadYourWrites,
    relay_watch::RelayProgress,
    report::{ActorReport, GetActorReport},
    supervision::{guarded, Guarded, PanicPayload, RestartReporter},
    Crash,
};
use crate::{
    db::{
        events::{EventsAfter, StoredEvent},
        outbox::topic,
        outbox_listener,
    },
    error::AppError,
};

const ACTOR: &str = "event_relay";
/// Events read per poll; a longer backlog is read by the polls that follow at once.
const BATCH: i64 = 1000;
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RelaySettings {
    pub interval: Duration,
    /// The newest event id when the service started: the tail starts after it.
    pub start_after: i64,
    /// Woken when events were appended (by this replica, or by any replica via NOTIFY).
    pub wake: Arc<Notify>,
    /// A PostgreSQL URL to LISTEN on; `None` on SQLite.
    pub listen_url: Option<String>,
    /// Shared with the DbGateway, whose writers wait for their tickets to be covered.
    pub read_your_writes: Arc<ReadYourWrites>,
}

pub struct EventRelay {
    db: DbGateway,
    cache: CacheClient,
    hub: Addr<EventHub>,
    interval: Duration,
    wake: Arc<Notify>,
    listen_url: Option<String>,
    read_your_writes: Arc<ReadYourWrites>,
    /// The last event handed on. Kept across a restart: what a panic interrupted is read
    /// again, and the hub ignores ids it already has.
    last_id: i64,
    polling: bool,
    /// A wake-up came while a poll was running: poll again when it ends.
    again: bool,
    reporter: RestartReporter,
    progress: RelayProgress,
}

impl EventRelay {
    pub fn new(
        settings: RelaySettings,
        db: DbGateway,
        cache: CacheClient,
        hub: Addr<EventHub>,
        reporter: RestartReporter,
    ) -> Self {
        Self {
            db,
            cache,
            hub,
            interval: settings.interval,
            wake: settings.wake,
            listen_url: settings.listen_url,
            read_your_writes: settings.read_your_writes,
            last_id: settings.start_after,
            polling: false,
            again: false,
            reporter,
            progress: RelayProgress::default(),
        }
    }

    /// Makes the relay's progress visible in metrics (lag, last success).
    pub fn watched_by(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.progress = RelayProgress::new(metrics);
        self
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.polling {
            self.again = true;
            return;
        }
        self.polling = true;
        self.again = false;
        let (db, cache, hub) = (self.db.clone(), self.cache.clone(), self.hub.clone());
        let read_your_writes = Arc::clone(&self.read_your_writes);
        let after = self.last_id;
        // Taken before reading: every commit counted in it is visible to the read.
        let horizon = read_your_writes.horizon();
        let read_and_hand_on = async move {
            let events = db.run(EventsAfter { after, limit: BATCH }).await?;
            let (count, last) = (events.len(), events.last().map(|event| event.id));
            for key in events.iter().filter_map(invalidated_by) {
                cache.invalidate(key);
            }
            if (count as i64) < BATCH {
                // Read to the end: the writers waiting may answer before the hub is done.
                read_your_writes.covered(horizon);
            }
            if !events.is_empty() {
                // Awaited, so the hub's mailbox holds at most one batch from here; if the
                // hub cannot take it, the batch is read again next time.
                hub.send(Publish { after, events })
                    .timeout(HUB_TIMEOUT)
                    .await
                    .map_err(|error| AppError::internal("event hub did not take a batch", &error))?;
            }
            Ok::<_, AppError>((count, last))
        };
        ctx.spawn(wrap_future(read_and_hand_on).map(move |outcome, act: &mut Self, ctx| {
            guarded(act, ctx, |act, ctx| {
                act.polling = false;
                match outcome {
                    Ok((count, last)) => {
                        act.progress.succeeded(count);
                        if let Some(last) = last {
                            act.last_id = act.last_id.max(last);
                        }
                        if count as i64 == BATCH || act.again {
                            act.poll(ctx);
                        }
                    }
                    Err(error) => act.progress.failed(&error),
                }
            });
        }));
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

/// Read the outbox now.
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

impl Handler<Wake> for EventRelay {
    type Result = ();
    fn handle(&mut self, _msg: Wake, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| act.poll(ctx));
    }
}

impl Actor for EventRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Runs again after a restart; whatever was spawned before went with the old context.
        guarded(self, ctx, |act, ctx| {
            act.polling = false;
            ctx.run_interval(act.interval, |act, ctx| {
                guarded(act, ctx, |act, ctx| {
                    act.progress.tick();
                    act.poll(ctx);
                });
            });
            let (wake, relay) = (Arc::clone(&act.wake), ctx.address());
            ctx.spawn(wrap_future(async move {
                loop {
                    wake.notified().await;
                    relay.do_send(Wake);
                }
            }));
            if let Some(url) = act.listen_url.clone() {
                ctx.spawn(wrap_future(outbox_listener::wake_on_notify(url, Arc::clone(&act.wake))));
            }
            act.poll(ctx);
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
        // Invalidations may have been missed mid-panic: everything cached could be stale.
        guarded(self, ctx, |act, _| {
            let horizon = act.read_your_writes.horizon();
            act.cache.clear();
            act.read_your_writes.covered(horizon);
        });
    }
}

impl Handler<GetActorReport> for EventRelay {
    type Result = MessageResult<GetActorReport>;
    fn handle(&mut self, _msg: GetActorReport, ctx: &mut Context<Self>) -> Self::Result {
        let report = guarded(self, ctx, |act, _| {
            let interval_ms = u64::try_from(act.interval.as_millis()).unwrap_or(u64::MAX);
            ActorReport::running(ACTOR, act.progress.state(Some(act.last_id), interval_ms))
        });
        MessageResult(report.unwrap_or_else(|| ActorReport::unresponsive(ACTOR, "panicked while reporting")))
    }
}

impl Handler<Crash> for EventRelay {
    type Result = Result<(), AppError>;
    fn handle(&mut self, msg: Crash, ctx: &mut Context<Self>) -> Self::Result {
        guarded(self, ctx, |_, _| msg.detonate()).ok_or_else(|| crashed(ACTOR))
    }
}
