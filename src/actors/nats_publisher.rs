//! The NatsPublisher tails the transactional outbox and publishes every event to NATS
//! JetStream, for other services (a mailer, a warehouse, analytics).
//!
//! At least once from the outbox, exactly once in the stream: the last event id JetStream
//! acknowledged is kept in the database, so a restart, a panic or a NATS outage resumes
//! right after it; an event sent again (its acknowledgement was lost, or a panic came
//! between the acknowledgement and the write) carries the same `Nats-Msg-Id`, which the
//! stream's duplicate window drops. Of several replicas, the one holding the lease row
//! publishes; the others stand by and take over once it stops renewing it. A replica that
//! cannot reach NATS does not claim or renew the lease, so one that can takes over.
//!
//! Publishing is off the request path: when NATS is down, requests are served as usual,
//! the backlog waits in the outbox (the janitor keeps unpublished events) and `/readyz`
//! shows the `nats` check failing without failing readiness.

use std::{sync::Arc, time::Duration};

use actix::{fut::wrap_future, Addr, AsyncContext, Context, Handler, Recipient, ResponseActFuture, Supervisor};
use actix_rt::time::{timeout, Instant};
use async_nats::{
    connection::State,
    jetstream::{self, message::PublishMessage, stream},
};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{
    db_executor::DbGateway,
    health::DependencyCheck,
    supervision::{
        guarded, guarded_interval, guarded_then, supervised_actor, RestartReporter, SupervisedActor, Supervision,
    },
};
use crate::db::DbError;
use crate::{
    config::NatsSettings,
    db::{
        nats_publisher::{
            ClaimLease, OutboxEvent, Progress, ReadProgress, RecordPublished, ReleaseLease, UnpublishedEvents,
        },
        outbox::topic,
    },
    domain::clock,
    metrics::Metrics,
};

const ACTOR: &str = super::names::NATS_PUBLISHER;
/// The `/readyz` check this actor reports.
const CHECK: &str = "nats";
/// Events published per round; a longer backlog is worked off in back-to-back rounds.
const BATCH: i64 = 256;
/// The longest any one NATS operation may take before the round gives up on it.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// The request id header on published messages (the same name as on HTTP responses).
const REQUEST_ID_HEADER: &str = "X-Request-Id";

pub struct NatsPublisher {
    settings: NatsSettings,
    /// This replica, as named in the lease row.
    holder: String,
    db: DbGateway,
    metrics: Arc<Metrics>,
    health: Recipient<DependencyCheck>,
    supervision: Supervision,
    interval: Duration,
    /// The outbox horizon as the relay last saw it: events beyond it wait.
    horizon: watch::Receiver<i64>,
    client: Option<async_nats::Client>,
    /// The stream was created or updated on this connection.
    stream_ready: bool,
    lease: Lease,
    /// A round (or the connect) is under way; rounds never overlap.
    busy: bool,
    /// Bumped by each restart, so the result of a round begun before it is ignored.
    generation: u64,
    /// What Health was last told, so it is told again only of a change.
    reported: Option<(bool, &'static str)>,
    /// The lease was handed back for shutdown: publish no more.
    retired: bool,
}

/// How the publisher learns what to publish: the relay's outbox horizon, and how often to
/// look.
pub struct OutboxFeed {
    pub interval: Duration,
    pub horizon: watch::Receiver<i64>,
}

#[derive(Debug, Clone, Copy)]
enum Lease {
    /// Not known: claim it (and read the position) before publishing.
    Unknown,
    /// Held, with the position published through; renewed when `renew_at` passes.
    Held { through: i64, renew_at: Instant },
    /// Another replica holds it; ask again at `retry_at`.
    Standby { retry_at: Instant },
}

impl NatsPublisher {
    /// Starts the supervised publisher. `holder` names this replica in the lease row;
    /// `feed` says how often the outbox is tailed (EVENT_POLL_INTERVAL_MS) and how far.
    pub fn start(
        settings: NatsSettings,
        holder: uuid::Uuid,
        db: DbGateway,
        metrics: Arc<Metrics>,
        health: Recipient<DependencyCheck>,
        reporter: RestartReporter,
        feed: OutboxFeed,
    ) -> Addr<Self> {
        tracing::info!(stream = %settings.stream, subjects = %format!("{}.>", settings.subject_prefix), "publishing the outbox to NATS JetStream");
        let supervision = reporter.supervision(ACTOR);
        Supervisor::start(move |_| Self {
            settings,
            holder: holder.to_string(),
            db,
            metrics,
            health,
            supervision,
            interval: feed.interval,
            horizon: feed.horizon,
            client: None,
            stream_ready: false,
            lease: Lease::Unknown,
            busy: false,
            generation: 0,
            reported: None,
            retired: false,
        })
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.retired {
            return;
        }
        let Some(client) = self.client.clone() else {
            self.connect(ctx);
            return;
        };
        let now = Instant::now();
        let claim = match self.lease {
            Lease::Standby { retry_at } if now < retry_at => return,
            Lease::Held { through, renew_at } if now < renew_at => Claim::Hold { through },
            _ => Claim::Claim,
        };
        self.busy = true;
        let round = Round {
            db: self.db.clone(),
            connected: client.connection_state() == State::Connected,
            jetstream: jetstream::ContextBuilder::new().timeout(NATS_TIMEOUT).build(client),
            stream: (!self.stream_ready).then(|| stream_config(&self.settings)),
            claim,
            holder: self.holder.clone(),
            lease: self.settings.lease,
            subject_prefix: self.settings.subject_prefix.clone(),
            horizon: *self.horizon.borrow(),
        };
        let generation = self.generation;
        guarded_then(ctx, round.run(), move |outcome, act, ctx| {
            if act.generation == generation {
                act.apply(outcome, ctx);
            }
        });
    }

    /// Makes the client once; it connects and reconnects by itself from then on.
    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.busy = true;
        let servers: Vec<String> = self.settings.url.expose().split(',').map(|s| s.trim().to_owned()).collect();
        let options = async_nats::ConnectOptions::new()
            .name("storefront")
            .connection_timeout(NATS_TIMEOUT)
            .retry_on_initial_connect();
        let generation = self.generation;
        guarded_then(ctx, async move { options.connect(servers.as_slice()).await }, move |connected, act, ctx| {
            if act.generation != generation {
                return;
            }
            act.busy = false;
            match connected {
                Ok(client) => {
                    act.client = Some(client);
                    act.tick(ctx);
                }
                Err(error) => act.report(false, "cannot connect to NATS", Some(error.to_string())),
            }
        });
    }

    fn apply(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        self.busy = false;
        let lease_period = self.settings.lease;
        let renew_at = Instant::now() + lease_period / 3;
        match outcome {
            Outcome::NatsDown { reason, detail, progress } => {
                // Without NATS the lease is left to expire, so a replica that can reach it
                // publishes instead; the stream is checked again on reconnecting.
                self.lease = Lease::Unknown;
                self.stream_ready = false;
                if let Some(progress) = progress {
                    self.metrics.nats_publish_lag.set(progress.backlog);
                }
                self.report(false, reason, detail);
            }
            Outcome::Standby { progress } => {
                self.stream_ready = true;
                self.lease = Lease::Standby { retry_at: renew_at };
                self.metrics.nats_publish_lag.set(progress.backlog);
                self.report(true, "standby: another replica holds the publishing lease", None);
            }
            Outcome::DatabaseUnavailable(error) => {
                // Start again from the position in the database once it answers.
                tracing::debug!(%error, "NATS publisher could not reach the database; will retry");
                self.lease = Lease::Unknown;
            }
            Outcome::Published(round) => {
                self.stream_ready = true;
                self.metrics.nats_published.inc_by(round.published);
                self.metrics.nats_publish_lag.set(round.backlog);
                self.lease = if round.lease_lost {
                    tracing::warn!("the NATS publishing lease passed to another replica");
                    Lease::Unknown
                } else {
                    let renew_at = if round.renewed { renew_at } else { self.lease_renewal_due() };
                    Lease::Held { through: round.through, renew_at }
                };
                match round.error {
                    Some(error) => {
                        // Whatever was not acknowledged is sent again next round.
                        self.stream_ready = false;
                        self.report(false, "publishing failed; retrying", Some(error));
                    }
                    None => {
                        self.report(true, "publishing", None);
                        if round.more_waiting && !round.lease_lost {
                            ctx.notify(Tick);
                        }
                    }
                }
            }
        }
    }

    fn lease_renewal_due(&self) -> Instant {
        match self.lease {
            Lease::Held { renew_at, .. } => renew_at,
            _ => Instant::now(),
        }
    }

    /// Tells Health how NATS stands, when that changed. `/readyz` is public, so it shows
    /// only `output`; the error's `detail` goes to the log. `try_send`: a full mailbox only
    /// delays the news to a later round, it never blocks this one.
    fn report(&mut self, passing: bool, output: &'static str, detail: Option<String>) {
        let state = (passing, output);
        if self.reported == Some(state) {
            return;
        }
        // The first report ("connecting") is no failure worth a warning.
        if !passing && self.reported.is_some() {
            tracing::warn!(state = output, detail, "NATS publishing is failing; events wait in the outbox");
        } else if self.reported.is_some_and(|(was_passing, _)| !was_passing) {
            tracing::info!(state = output, "NATS publishing recovered");
        }
        let check = DependencyCheck { name: CHECK, passing, output: output.to_owned(), since: Utc::now() };
        self.reported = self.health.try_send(check).is_ok().then_some(state);
    }
}

/// One round: reach NATS, hold the lease, publish a batch, record how far it got. It owns
/// what it needs, so the actor is free while it runs.
struct Round {
    db: DbGateway,
    connected: bool,
    jetstream: jetstream::Context,
    /// Set when the stream is to be created or updated first.
    stream: Option<stream::Config>,
    claim: Claim,
    holder: String,
    lease: Duration,
    subject_prefix: String,
    /// Publish no event beyond it (`db::outbox_horizon`).
    horizon: i64,
}

#[derive(Debug, Clone, Copy)]
enum Claim {
    /// Claim or renew the lease; the position comes from the database.
    Claim,
    /// Held and not due for renewal.
    Hold { through: i64 },
}

enum Outcome {
    NatsDown { reason: &'static str, detail: Option<String>, progress: Option<Progress> },
    Standby { progress: Progress },
    DatabaseUnavailable(DbError),
    Published(Published),
}

struct Published {
    /// Every event through this id is in the stream.
    through: i64,
    /// Messages the stream stored (duplicates it dropped not counted).
    published: u64,
    /// Events still to publish after `through`.
    backlog: i64,
    renewed: bool,
    lease_lost: bool,
    /// A full batch went out: more may be waiting, so the next round starts at once.
    more_waiting: bool,
    error: Option<String>,
}

impl Round {
    async fn run(self) -> Outcome {
        if !self.connected {
            let progress = self.db.run(ReadProgress).await.ok();
            return Outcome::NatsDown { reason: "NATS is unreachable", detail: None, progress };
        }
        if let Some(config) = self.stream {
            let name = config.name.clone();
            match timeout(NATS_TIMEOUT, self.jetstream.create_or_update_stream(config)).await {
                Ok(Ok(_)) => tracing::info!(stream = %name, "JetStream stream created or updated"),
                Ok(Err(error)) => {
                    let detail = Some(format!("stream {name}: {error}"));
                    return Outcome::NatsDown { reason: "cannot create or update the stream", detail, progress: None };
                }
                Err(_) => {
                    return Outcome::NatsDown { reason: "NATS did not answer in time", detail: None, progress: None }
                }
            }
        }
        let lease_until = || clock::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let (mut through, mut renewed) = match self.claim {
            Claim::Hold { through } => (through, false),
            Claim::Claim => {
                let claim = ClaimLease { holder: self.holder.clone(), now: clock::now(), until: lease_until() };
                match self.db.run(claim).await {
                    Ok(progress) if progress.held => (progress.published_through, true),
                    Ok(progress) => return Outcome::Standby { progress },
                    Err(error) => return Outcome::DatabaseUnavailable(error),
                }
            }
        };
        let unpublished = UnpublishedEvents { after: through, through: self.horizon, limit: BATCH };
        let pending = match self.db.run(unpublished).await {
            Ok(pending) => pending,
            Err(error) => return Outcome::DatabaseUnavailable(error),
        };
        let sent = publish(&self.jetstream, &self.subject_prefix, &pending.events).await;
        let mut lease_lost = false;
        if let Some(done) = sent.through {
            let record = RecordPublished { holder: self.holder.clone(), through: done, until: lease_until() };
            match self.db.run(record).await {
                Ok(true) => (through, renewed) = (done, true),
                Ok(false) => lease_lost = true,
                // JetStream has them; the next round sends them again, and they are dropped as duplicates.
                Err(error) => return Outcome::DatabaseUnavailable(error),
            }
        }
        Outcome::Published(Published {
            through,
            published: sent.published,
            backlog: (pending.backlog - sent.done).max(0),
            renewed,
            lease_lost,
            more_waiting: pending.events.len() as i64 == BATCH,
            error: sent.error,
        })
    }
}

struct Sent {
    /// The newest event through which every event is in the stream (or deliberately
    /// skipped); `None` when the batch made no progress.
    through: Option<i64>,
    done: i64,
    published: u64,
    error: Option<String>,
}

/// Publishes `events` in id order: all are sent, then the acknowledgements are awaited in
/// order, stopping at the first that fails.
async fn publish(jetstream: &jetstream::Context, prefix: &str, events: &[OutboxEvent]) -> Sent {
    let mut sent = Sent { through: None, done: 0, published: 0, error: None };
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        // `users` events carry bare ids for the replicas' caches: internal, never published.
        if event.topic == topic::USERS {
            acks.push((event.id, None));
            continue;
        }
        let mut message = PublishMessage::build().payload(message_body(event).into()).message_id(event.id.to_string());
        if let Some(request_id) = &event.request_id {
            message = message.header(REQUEST_ID_HEADER, request_id.as_str());
        }
        match timeout(NATS_TIMEOUT, jetstream.send_publish(subject(prefix, event), message)).await {
            Ok(Ok(ack)) => acks.push((event.id, Some(ack))),
            Ok(Err(error)) => {
                sent.error = Some(error.to_string());
                break;
            }
            Err(_) => {
                sent.error = Some("NATS did not take the message in time".into());
                break;
            }
        }
    }
    for (id, ack) in acks {
        if let Some(ack) = ack {
            match timeout(NATS_TIMEOUT, ack).await {
                Ok(Ok(ack)) => sent.published += u64::from(!ack.duplicate),
                Ok(Err(error)) => {
                    sent.error = Some(error.to_string());
                    break;
                }
                Err(_) => {
                    sent.error = Some("JetStream did not acknowledge in time".into());
                    break;
                }
            }
        }
        sent.through = Some(id);
        sent.done += 1;
    }
    sent
}

/// `<prefix>.<topic>.<kind>`, e.g. `storefront.events.orders.order.created`.
pub fn subject(prefix: &str, event: &OutboxEvent) -> String {
    format!("{prefix}.{}.{}", event.topic, event.kind)
}

/// The event as the WebSocket `event` message shows it.
pub fn message_body(event: &OutboxEvent) -> Vec<u8> {
    let data: Value = serde_json::from_str(&event.payload).unwrap_or(Value::Null);
    let body = json!({
        "type": "event",
        "id": event.id,
        "topic": event.topic,
        "kind": event.kind,
        "data": data,
        "at": clock::to_utc(event.created_at),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The stream: every subject under the prefix, on disk, kept for NATS_STREAM_MAX_AGE_HOURS
/// (oldest dropped first), with a duplicate window that outlasts a publisher's takeover.
fn stream_config(settings: &NatsSettings) -> stream::Config {
    let duplicate_window = (settings.lease * 4).max(Duration::from_secs(120)).min(settings.stream_max_age);
    stream::Config {
        name: settings.stream.clone(),
        description: Some("Storefront outbox events, one message per committed change".into()),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: settings.stream_max_age,
        max_bytes: -1,
        max_messages: -1,
        max_messages_per_subject: -1,
        max_consumers: -1,
        num_replicas: settings.stream_replicas,
        duplicate_window,
        ..Default::default()
    }
}

/// Stops publishing and hands the lease back, so another replica takes over at once
/// instead of after NATS_LEASE_SECONDS. Sent at shutdown, once the HTTP server stopped.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for NatsPublisher {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _msg: Retire, _ctx: &mut Context<Self>) -> Self::Result {
        self.retired = true;
        // A round still under way may record its progress (it holds the lease until the
        // release below); its outcome is not applied.
        self.generation += 1;
        let (db, holder) = (self.db.clone(), self.holder.clone());
        Box::pin(wrap_future(async move {
            match db.run(ReleaseLease { holder }).await {
                Ok(()) => tracing::info!("NATS publishing lease handed back"),
                Err(error) => {
                    tracing::warn!(%error, "cannot hand the NATS publishing lease back; it expires by itself")
                }
            }
        }))
    }
}

/// Runs a round now (after a full batch, so a backlog is worked off without waiting).
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Tick;

impl Handler<Tick> for NatsPublisher {
    type Result = ();
    fn handle(&mut self, _msg: Tick, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| act.tick(ctx));
    }
}

supervised_actor!(NatsPublisher);

impl SupervisedActor for NatsPublisher {
    fn start(&mut self, ctx: &mut Context<Self>) {
        self.busy = false;
        if self.reported.is_none() {
            self.report(false, "connecting", None);
        }
        self.tick(ctx);
        guarded_interval(ctx, self.interval, |act, ctx| act.tick(ctx));
    }

    fn recover(&mut self, _ctx: &mut Context<Self>) {
        // What a panic may have left half-done is dropped: the position is read back from
        // the database (this replica still holds the lease, so it resumes at once), and
        // the stream is checked again. The connection is kept.
        self.generation += 1;
        self.lease = Lease::Unknown;
        self.stream_ready = false;
    }

    fn report_state(&mut self) -> Value {
        let (role, published_through) = match self.lease {
            Lease::Unknown => ("claiming", None),
            Lease::Held { through, .. } => ("active", Some(through)),
            Lease::Standby { .. } => ("standby", None),
        };
        json!({
            "role": if self.retired { "retired" } else { role },
            "connected": self.client.is_some(),
            "stream": self.settings.stream,
            "stream_ready": self.stream_ready,
            "published_through": published_through,
            "lag_events": self.metrics.nats_publish_lag.get(),
            "published_total": self.metrics.nats_published.get(),
        })
    }
}
