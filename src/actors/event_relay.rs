//! The EventRelay is the one reader of the transactional outbox. It tails `id > last` up
//! to the outbox horizon (`db::outbox_horizon`), which it also shares with the NATS
//! publisher,
//! drops the cache entries every committed event made stale and hands the events to the
//! EventHub (live updates), this replica's own events included. Cache entries this
//! replica's writes made stale were dropped by the DbExecutor right after each COMMIT,
//! before the writer was answered (or timed out); the relay drops those of every other
//! writer: other replicas, the CLI, anything else writing to the outbox.
//!
//! It reads as soon as it is woken — by this replica's DbExecutor after a use case that
//! appended events, and on PostgreSQL by a `NOTIFY` from any replica — and otherwise every
//! `EVENT_POLL_INTERVAL_MS`, which is the fallback (and the SQLite path across replicas).
//! Polls start at most every `POLL_SPACING`: under load one read covers the commits of
//! that time instead of each commit costing a read. While the horizon waits for running
//! transactions it looks again after the same spacing: a transaction that ends without
//! appending announces nothing.
//!
//! After each read it publishes how far the outbox is settled, the position reads answer
//! (`event_position`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{fut::wrap_future, Addr, AsyncContext, Context, Handler, Message};
use tokio::sync::watch;

use super::{
    cache::CacheClient,
    db_executor::DbGateway,
    event_hub::{EventHub, Publish},
    event_position::EventPosition,
    relay_watch::RelayProgress,
    supervision::{guarded, guarded_interval, guarded_then, supervised_actor, SupervisedActor, Supervision},
};
use crate::db::DbError;
use crate::{
    db::{
        events::{EventsAfter, StoredEvent, Tail},
        outbox::{made_stale, OutboxSignals},
        outbox_horizon::Horizon,
        outbox_listener,
    },
    domain::cache_key::CacheKey,
};
use uuid::Uuid;

pub const ACTOR: &str = super::names::EVENT_RELAY;
/// Events read per poll; a longer backlog is read by the polls that follow at once.
const BATCH: i64 = 1000;
const HUB_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time between the starts of two polls (what a live update may wait for more).
const POLL_SPACING: Duration = Duration::from_millis(10);

pub struct RelaySettings {
    pub interval: Duration,
    /// Where the tail starts (`events::StartingPoint`), and the horizon there.
    pub start_after: i64,
    pub horizon: Horizon,
    /// `relay` is woken when events were appended (by this replica, or by any replica via
    /// NOTIFY); `announce`, when this replica appended, for the listener to tell the others.
    pub signals: OutboxSignals,
    /// Where the horizon is published for the NATS publisher.
    pub horizon_watch: watch::Sender<i64>,
    /// Where the position reads answer is published.
    pub event_position: EventPosition,
    /// This replica, as its events name it: their cache entries are already dropped.
    pub origin: Uuid,
    /// A PostgreSQL URL to LISTEN on; `None` on SQLite.
    pub listen_url: Option<String>,
}

pub struct EventRelay {
    db: DbGateway,
    cache: CacheClient,
    hub: Addr<EventHub>,
    interval: Duration,
    signals: OutboxSignals,
    listen_url: Option<String>,
    /// Lent to each poll, and kept between them.
    horizon: Horizon,
    horizon_watch: watch::Sender<i64>,
    event_position: EventPosition,
    /// A poll is set to start after `POLL_SPACING`.
    poll_scheduled: bool,
    last_poll: Option<Instant>,
    origin: Arc<str>,
    /// The last event handed on. Kept across a restart: what a panic interrupted is read
    /// again, and the hub ignores ids it already has.
    last_id: i64,
    polling: bool,
    /// A wake-up came while a poll was running: poll again when it ends.
    again: bool,
    supervision: Supervision,
    progress: RelayProgress,
}

impl EventRelay {
    pub fn new(
        settings: RelaySettings,
        db: DbGateway,
        cache: CacheClient,
        hub: Addr<EventHub>,
        supervision: Supervision,
    ) -> Self {
        let relay = Self {
            db,
            cache,
            hub,
            interval: settings.interval,
            signals: settings.signals,
            horizon: settings.horizon,
            horizon_watch: settings.horizon_watch,
            event_position: settings.event_position,
            poll_scheduled: false,
            last_poll: None,
            origin: settings.origin.to_string().into(),
            listen_url: settings.listen_url,
            last_id: settings.start_after,
            polling: false,
            again: false,
            supervision,
            progress: RelayProgress::default(),
        };
        relay.publish_position();
        relay
    }

    /// Every event id up to here is settled: the relay read it, and read no further than
    /// the horizon. The horizon bounds it only when the tail started past an appender that
    /// had not ended (`StartingPoint` gave up waiting); on SQLite it is `i64::MAX`.
    fn publish_position(&self) {
        self.event_position.advance_to(self.last_id.min(self.horizon.settled_through()));
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
        if let Some(since) = self.last_poll.map(|at| at.elapsed()).filter(|since| *since < POLL_SPACING) {
            self.poll_later(POLL_SPACING - since, ctx);
            return;
        }
        self.last_poll = Some(Instant::now());
        self.polling = true;
        self.again = false;
        let (db, cache, hub, origin) =
            (self.db.clone(), self.cache.clone(), self.hub.clone(), Arc::clone(&self.origin));
        let after = self.last_id;
        // A poll that fails loses what it learnt since, not what had settled before it.
        let fallback = Horizon::at(self.horizon.settled_through());
        let horizon = std::mem::replace(&mut self.horizon, fallback);
        let read_and_hand_on = async move {
            let Tail { events, horizon } = db.run(EventsAfter { after, limit: BATCH, horizon }).await?;
            let (count, last) = (events.len(), events.last().map(|event| event.id));
            let others = events.iter().filter(|event| event.origin.as_deref() != Some(&*origin));
            for key in others.filter_map(invalidated_by) {
                cache.invalidate(key);
            }
            if !events.is_empty() {
                // Awaited, so the hub's mailbox holds at most one batch from here; if the
                // hub cannot take it, the batch is read again next time.
                hub.send(Publish { after, events })
                    .timeout(HUB_TIMEOUT)
                    .await
                    .map_err(|error| DbError::internal("event hub did not take a batch", &error))?;
            }
            Ok::<_, DbError>((count, last, horizon))
        };
        guarded_then(ctx, read_and_hand_on, move |outcome, act, ctx| {
            act.polling = false;
            match outcome {
                Ok((count, last, horizon)) => {
                    act.progress.succeeded(count);
                    if let Some(last) = last {
                        act.last_id = act.last_id.max(last);
                    }
                    act.horizon_watch.send_if_modified(|published| {
                        let moved = horizon.settled_through() > *published;
                        *published = (*published).max(horizon.settled_through());
                        moved
                    });
                    let waiting = horizon.is_waiting();
                    act.horizon = horizon;
                    act.publish_position();
                    if count as i64 == BATCH || act.again {
                        act.poll(ctx);
                    } else if waiting {
                        act.poll_later(POLL_SPACING, ctx);
                    }
                }
                Err(error) => act.progress.failed(&error),
            }
        });
    }

    fn poll_later(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if self.poll_scheduled {
            return;
        }
        self.poll_scheduled = true;
        ctx.run_later(after, |act, ctx| {
            guarded(act, ctx, |act, ctx| {
                act.poll_scheduled = false;
                act.poll(ctx);
            });
        });
    }
}

/// The cache key an event makes stale, if any.
fn invalidated_by(event: &StoredEvent) -> Option<CacheKey> {
    made_stale(&event.topic, event.user_id.as_deref(), || {
        serde_json::from_str::<serde_json::Value>(&event.payload).ok()
    })
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

supervised_actor!(EventRelay);

impl SupervisedActor for EventRelay {
    /// Runs again after a restart; whatever was spawned before went with the old context.
    fn start(&mut self, ctx: &mut Context<Self>) {
        self.polling = false;
        self.poll_scheduled = false;
        guarded_interval(ctx, self.interval, |act, ctx| {
            act.progress.tick();
            act.poll(ctx);
        });
        let (wake, relay) = (Arc::clone(&self.signals.relay), ctx.address());
        ctx.spawn(wrap_future(async move {
            loop {
                wake.notified().await;
                relay.do_send(Wake);
            }
        }));
        if let Some(url) = self.listen_url.clone() {
            ctx.spawn(wrap_future(outbox_listener::listen_and_announce(url, self.signals.clone())));
        }
        self.poll(ctx);
    }

    fn recover(&mut self, _ctx: &mut Context<Self>) {
        // Invalidations may have been missed mid-panic: everything cached could be stale.
        self.cache.clear();
    }

    fn report_state(&mut self) -> serde_json::Value {
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        self.progress.state(Some(self.last_id), interval_ms)
    }
}
