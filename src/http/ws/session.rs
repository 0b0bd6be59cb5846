//! One live-updates connection: a task that owns its subscriptions, its position (the
//! last event id it delivered on each topic) and the receiving end of its bounded queue.
//!
//! Everything a session sends is in id order per topic and never twice: replayed events
//! come from the database up to the hub's position at the moment of (re)subscribing, live
//! ones from the queue, and anything at or below the session's position is skipped.

use std::{
    future::{pending, poll_fn, Future},
    pin::{pin, Pin},
    sync::Arc,
    task::Poll,
    time::Duration,
};

use actix::Addr;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Message, ProtocolError, Session};
use bytestring::ByteString;
use chrono::{DateTime, Utc};
use futures_sink::Sink;
use prometheus::IntCounter;
use tokio::{
    sync::{mpsc, watch},
    time::{timeout, Instant},
};

use crate::{
    actors::{
        event_hub::{Attach, Attached, Delivery, Detach, Detached, EventHub, Kick, Outbound, SessionId, SetTopics},
        DbGateway,
    },
    db::{
        events::{Replay, ReplayPage},
        users::FindActiveUser,
    },
    domain::{
        clock,
        live::{
            error_code, error_message, event_message, parse_command, subscribed_message, Command, Topic, TopicSet,
            Viewer,
        },
    },
    metrics::{disconnect_reason, Metrics},
};

/// Largest frame (and message) a client may send; subscribe commands are tiny.
pub const MAX_FRAME_BYTES: usize = 4 * 1024;
const HUB_TIMEOUT: Duration = Duration::from_secs(2);
const REPLAY_PAGE: i64 = 500;
/// How often a session that cannot re-attach (the hub restarting) tries again.
const REJOIN_ATTEMPTS: u32 = 20;
/// How long a write may still take, once the queue overflowed, before the client counts
/// as not reading.
const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(2);
/// How long a close frame may wait behind unread messages before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SessionSetup {
    pub hub: Addr<EventHub>,
    pub db: DbGateway,
    pub metrics: Arc<Metrics>,
    pub viewer: Viewer,
    /// When the token that opened the connection expires.
    pub token_expires_at: Option<DateTime<Utc>>,
    pub attached: Attached,
    pub ping_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// How and why the connection ends.
struct End {
    reason: &'static str,
    close: Option<CloseReason>,
}

impl End {
    fn with(reason: &'static str, code: CloseCode, text: &str) -> Self {
        Self { reason, close: Some(CloseReason { code, description: Some(text.to_owned()) }) }
    }

    /// The socket is gone or unwritable: nothing more can be said.
    fn gone(reason: &'static str) -> Self {
        Self { reason, close: None }
    }
}

/// Leaves the hub however the session ends.
struct Membership {
    hub: Addr<EventHub>,
    id: SessionId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.do_send(Detach(self.id));
    }
}

struct LiveSession {
    ws: Session,
    db: DbGateway,
    metrics: Arc<Metrics>,
    /// `ws_events_sent_total` per topic (indexed by `Topic as usize`), looked up once
    /// rather than per event.
    sent: [IntCounter; 4],
    viewer: Viewer,
    membership: Membership,
    queue: mpsc::Receiver<Outbound>,
    kick: Arc<Kick>,
    topics: TopicSet,
    /// The last event id delivered per topic (indexed by `Topic as usize`).
    delivered: [i64; 4],
    write_timeout: Duration,
    /// Sending from the database rather than the queue (which then fills up meanwhile).
    replaying: bool,
    overflows: Overflows,
}

/// Bursts that overflowed the queue while the client kept reading: each is caught up
/// from the database, but a subscriber that needs that again and again is too slow.
struct Overflows {
    window_started: Instant,
    count: u32,
}

impl Overflows {
    const WINDOW: Duration = Duration::from_secs(60);
    const ALLOWED: u32 = 3;

    /// Counts one; true while it is still within what a reading client may need.
    fn record(&mut self) -> bool {
        if self.window_started.elapsed() > Self::WINDOW {
            *self = Self { window_started: Instant::now(), count: 0 };
        }
        self.count += 1;
        self.count <= Self::ALLOWED
    }
}

/// Counts the connection as open for as long as it lives, however its task ends.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.ws_connections.inc();
        Self(Arc::clone(metrics))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.ws_connections.dec();
    }
}

/// Serves one connection until it ends. Built before the task starts, so the task holds
/// the session and its streams once (an `async fn` would also keep its arguments).
pub fn run(ws: Session, stream: actix_ws::MessageStream, setup: SessionSetup) -> impl Future<Output = ()> {
    let SessionSetup { hub, db, metrics, viewer, token_expires_at, attached, ping_interval, shutdown } = setup;
    let open = OpenConnection::new(&metrics);
    let Attached { id, queue, kick, position } = attached;
    let sent = Topic::ALL.map(|topic| metrics.ws_events_sent.with_label_values(&[topic.name()]));
    let mut session = LiveSession {
        ws,
        db,
        metrics,
        sent,
        viewer,
        membership: Membership { hub, id },
        queue,
        kick,
        topics: TopicSet::default(),
        delivered: [position; 4],
        // A client that cannot take one message in this long is not reading.
        write_timeout: (ping_interval * 2).max(Duration::from_secs(5)),
        replaying: false,
        overflows: Overflows { window_started: Instant::now(), count: 0 },
    };
    let stream =
        stream.max_frame_size(MAX_FRAME_BYTES).aggregate_continuations().max_continuation_size(MAX_FRAME_BYTES);
    async move {
        let end = session.serve(stream, ping_interval, token_expires_at, shutdown).await;
        let metrics = Arc::clone(&session.metrics);
        let ws = session.into_socket();
        metrics.ws_disconnects.with_label_values(&[end.reason]).inc();
        drop(open);
        if let Some(reason) = end.close {
            // Queued behind what the client has not read yet; a client that never reads
            // does not hold the task beyond this.
            let _ = timeout(CLOSE_TIMEOUT, ws.close(Some(reason))).await;
        }
    }
}

fn slow_consumer() -> End {
    End::with(disconnect_reason::SLOW_CONSUMER, CloseCode::Policy, "slow consumer")
}

fn user_deleted() -> End {
    End::with(disconnect_reason::USER_DELETED, CloseCode::Policy, "user deleted")
}

fn deadline_of(expires_at: Option<DateTime<Utc>>) -> Option<Instant> {
    let expires_at = expires_at?;
    let left = (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

/// Resolves once the application shuts down (or is gone, so nobody would announce it).
async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|down| *down).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => pending().await,
    }
}

impl LiveSession {
    /// Ends the session (leaving the hub) and keeps only the socket, for the close frame.
    fn into_socket(self) -> Session {
        self.ws
    }

    async fn serve(
        &mut self,
        mut stream: AggregatedMessageStream,
        ping_interval: Duration,
        token_expires_at: Option<DateTime<Utc>>,
        shutdown: watch::Receiver<bool>,
    ) -> End {
        // Built once and kept across iterations: arming a timer or a watch again on every
        // event would cost a lock per event per subscriber.
        let mut token_expiry = pin!(sleep_until(deadline_of(token_expires_at)));
        let mut shutting_down = pin!(shutting_down(shutdown.clone()));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        let mut last_heard = Instant::now();
        loop {
            if *shutdown.borrow() {
                return End::with(disconnect_reason::SHUTDOWN, CloseCode::Away, "server shutting down");
            }
            if let Some(reason) = self.kick.reason() {
                if let Err(end) = Box::pin(self.after_kick(reason)).await {
                    return end;
                }
                continue;
            }
            // In this order: what the client sent and the deadlines first (each a cheap
            // check, and never starved by a steady flow of events), then the queue, and the
            // shutdown watch last (the check above reads it on every turn). The timers and the
            // watch are kept across turns, so nothing is armed again per event. The hub's kick needs
            // no branch of its own: letting go of a session closes its queue, which ends
            // `recv` here (and the check above reads why).
            let step = tokio::select! {
                biased;
                frame = stream.recv() => {
                    // Boxed: commands are rare, and inline their replay and hub round trips
                    // would make every idle connection's task as large as the largest of them.
                    let handled = Box::pin(self.on_frame(frame)).await;
                    // Counted from when handling ends: a long replay is not the client's silence.
                    last_heard = Instant::now();
                    handled
                }
                () = &mut token_expiry => {
                    return End::with(disconnect_reason::TOKEN_EXPIRED, CloseCode::Policy, "token expired")
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > ping_interval * 2 {
                        // The peer is not answering: there is nobody to read a close frame.
                        return End::gone(disconnect_reason::HEARTBEAT);
                    }
                    Box::pin(self.control(|mut ws| async move { ws.ping(b"").await })).await
                }
                outbound = self.queue.recv() => match outbound {
                    Some(outbound) => self.on_outbound(outbound).await,
                    // The hub let go: the kick says why (checked at the top of the loop);
                    // without one (the hub itself went away), join it again.
                    None if self.kick.reason().is_some() => continue,
                    None => Box::pin(self.rejoin()).await,
                },
                () = &mut shutting_down => {
                    return End::with(disconnect_reason::SHUTDOWN, CloseCode::Away, "server shutting down")
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn after_kick(&mut self, reason: Detached) -> Result<(), End> {
        match reason {
            // The queue overflowed while this session was not waiting on the client (it
            // was draining a burst): catch up from the database, unless it keeps happening.
            Detached::SlowConsumer if self.overflows.record() => self.rejoin().await,
            Detached::SlowConsumer => Err(slow_consumer()),
            Detached::UserDeleted => Err(user_deleted()),
            Detached::Resync => self.rejoin().await,
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<AggregatedMessage, ProtocolError>>) -> Result<(), End> {
        match frame {
            None | Some(Ok(AggregatedMessage::Close(_))) => Err(End::gone(disconnect_reason::CLIENT)),
            Some(Ok(AggregatedMessage::Text(text))) => self.on_command(&text).await,
            Some(Ok(AggregatedMessage::Binary(_))) => {
                Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Unsupported, "binary frames are not supported"))
            }
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                self.control(|mut ws| async move { ws.pong(&bytes).await }).await
            }
            Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
            Some(Err(ProtocolError::Overflow)) => {
                Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Size, "frame larger than 4 KiB"))
            }
            // The aggregator's own limit on a message split into continuation frames.
            Some(Err(ProtocolError::Io(_))) => {
                Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Size, "message larger than 4 KiB"))
            }
            Some(Err(_)) => Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Protocol, "protocol error")),
        }
    }

    /// Sends a ping or pong: like any write, it waits while the client does not read, but
    /// not forever — a client that cannot take a control frame is gone.
    async fn control<F, Fut>(&self, send: F) -> Result<(), End>
    where
        F: FnOnce(Session) -> Fut,
        Fut: std::future::Future<Output = Result<(), actix_ws::Closed>>,
    {
        match timeout(self.write_timeout, send(self.ws.clone())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::gone(disconnect_reason::CLIENT)),
            Err(_) => Err(End::gone(disconnect_reason::HEARTBEAT)),
        }
    }

    /// Writes one message. The common case, a connection with room, hands the frame over
    /// at once, without arming a timer. Otherwise see `write_when_room`.
    async fn write(&mut self, text: impl Into<ByteString>) -> Result<(), End> {
        let text = text.into();
        let ws = &mut self.ws;
        let room = poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(ready) => Some(ready),
                Poll::Pending => None,
            })
        })
        .await;
        match room {
            // The frame joins the connection's outbound buffer (its flush is a no-op).
            Some(Ok(())) => {
                Pin::new(&mut self.ws).start_send(Message::Text(text)).map_err(|_| End::gone(disconnect_reason::CLIENT))
            }
            Some(Err(_)) => Err(End::gone(disconnect_reason::CLIENT)),
            None => Box::pin(self.write_when_room(text)).await,
        }
    }

    /// Waits for room to write one message. A client that does not read makes this wait
    /// (the socket is full); if meanwhile its queue overflows, the hub's verdict ends the
    /// wait — unless this session is replaying, when the overflow is the replay's doing,
    /// not the client's.
    async fn write_when_room(&mut self, text: ByteString) -> Result<(), End> {
        let finished = |sent: Result<Result<(), actix_ws::Closed>, _>| match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::gone(disconnect_reason::CLIENT)),
            Err(_) => Err(End::gone(disconnect_reason::SLOW_CONSUMER)),
        };
        let kick = Arc::clone(&self.kick);
        let send = timeout(self.write_timeout, self.ws.text(text));
        tokio::pin!(send);
        tokio::select! {
            sent = &mut send => finished(sent),
            reason = kick.fired() => match reason {
                // Waiting on this write may only mean the frames ahead of it are still being
                // flushed; a client that reads gets it out within the grace, one that does
                // not is the slow consumer the overflow says it is.
                Detached::SlowConsumer if !self.replaying => match timeout(SLOW_CONSUMER_GRACE, &mut send).await {
                    Ok(sent) => finished(sent),
                    Err(_) => Err(slow_consumer()),
                },
                Detached::UserDeleted => Err(user_deleted()),
                _ => finished(send.await),
            },
        }
    }

    async fn send_error(&mut self, code: &str, message: &str) -> Result<(), End> {
        self.write(error_message(code, message)).await
    }

    async fn on_command(&mut self, text: &str) -> Result<(), End> {
        match parse_command(text) {
            Err(bad) => self.send_error(error_code::BAD_REQUEST, &bad.0).await,
            Ok(Command::Subscribe { topics, since }) => self.subscribe(topics, since).await,
            Ok(Command::Unsubscribe { topics }) => {
                let mut remaining = self.topics;
                for topic in topics {
                    remaining.remove(topic);
                }
                let position = self.set_topics(remaining).await?;
                self.write(subscribed_message(self.topics, position)).await
            }
        }
    }

    async fn subscribe(&mut self, requested: Vec<Topic>, since: Option<i64>) -> Result<(), End> {
        let (allowed, denied): (Vec<Topic>, Vec<Topic>) =
            requested.into_iter().partition(|topic| self.viewer.may_subscribe(*topic));
        if !denied.is_empty() {
            let names: Vec<&str> = denied.iter().map(|topic| topic.name()).collect();
            let message = format!("Not allowed for this connection: {}.", names.join(", "));
            self.send_error(error_code::FORBIDDEN, &message).await?;
        }
        if allowed.is_empty() {
            return Ok(());
        }
        let added: TopicSet = allowed.iter().copied().filter(|topic| !self.topics.contains(*topic)).collect();
        let mut wanted = self.topics;
        for topic in allowed {
            wanted.insert(topic);
        }
        let position = self.set_topics(wanted).await?;
        for topic in added.iter() {
            self.delivered[topic as usize] = since.unwrap_or(position);
        }
        self.write(subscribed_message(self.topics, position)).await?;
        if since.is_some() {
            self.replay(added, position).await?;
            if matches!(self.kick.reason(), Some(Detached::SlowConsumer | Detached::Resync)) {
                // The queue filled while this session replayed: that was not the client's doing.
                self.rejoin().await?;
            }
        }
        Ok(())
    }

    /// Tells the hub which topics to offer; answers the position it took effect at.
    async fn set_topics(&mut self, topics: TopicSet) -> Result<i64, End> {
        for _ in 0..REJOIN_ATTEMPTS {
            let answer =
                self.membership.hub.send(SetTopics { id: self.membership.id, topics }).timeout(HUB_TIMEOUT).await;
            if let Ok(Some(position)) = answer {
                self.topics = topics;
                return Ok(position);
            }
            // The hub let go of this session (or is restarting): join again, then retry.
            self.rejoin().await?;
        }
        Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Error, "live updates unavailable; reconnect"))
    }

    async fn on_outbound(&mut self, outbound: Outbound) -> Result<(), End> {
        match outbound {
            Outbound::Event(delivery) => self.deliver(&delivery).await,
            Outbound::ViewerChanged(viewer) => {
                self.viewer = viewer;
                let lost: Vec<Topic> = self.topics.iter().filter(|topic| !viewer.may_subscribe(*topic)).collect();
                if lost.is_empty() {
                    return Ok(());
                }
                for topic in &lost {
                    self.topics.remove(*topic);
                }
                let names: Vec<&str> = lost.iter().map(|topic| topic.name()).collect();
                let message = format!("Your role no longer allows: {}.", names.join(", "));
                self.send_error(error_code::FORBIDDEN, &message).await
            }
        }
    }

    async fn deliver(&mut self, delivery: &Delivery) -> Result<(), End> {
        let topic = delivery.topic;
        if !self.topics.contains(topic) {
            return Ok(());
        }
        if topic.is_replayable() {
            if delivery.id <= self.delivered[topic as usize] {
                return Ok(());
            }
            self.delivered[topic as usize] = delivery.id;
        }
        // The frame's text is shared by every subscriber: this clones a reference.
        self.write(delivery.text.clone()).await?;
        self.sent[topic as usize].inc();
        // Live deliveries only: a replayed event's age says nothing about delivery speed.
        let latency = (Utc::now() - delivery.committed_at).to_std().unwrap_or(Duration::ZERO);
        self.metrics.event_delivery.observe(latency.as_secs_f64());
        Ok(())
    }

    /// Sends every retained event on `topics` after what this session delivered, up to
    /// `through`. Events already pruned make a gap-free replay impossible: the client is
    /// told `since_expired` and continues from `through`.
    async fn replay(&mut self, topics: TopicSet, through: i64) -> Result<(), End> {
        self.replaying = true;
        let replayed = self.replay_from_database(topics, through).await;
        self.replaying = false;
        replayed
    }

    async fn replay_from_database(&mut self, topics: TopicSet, through: i64) -> Result<(), End> {
        let replayable: TopicSet = topics.iter().filter(|topic| topic.is_replayable()).collect();
        let Some(mut after) = replayable.iter().map(|topic| self.delivered[topic as usize]).min() else {
            return Ok(());
        };
        let names = replayable.names();
        while after < through {
            let page = ReplayPage {
                after,
                through,
                topics: names.clone(),
                owner: self.viewer.user_id().map(|id| id.to_string()),
                all_private: self.viewer.sees(Topic::Orders, None),
                limit: REPLAY_PAGE,
            };
            let events = match self.db.run(page).await {
                Ok(Replay::Events(events)) => events,
                Ok(Replay::Expired { pruned_through }) => {
                    let message = format!(
                        "Events after {after} up to {pruned_through} were pruned; re-read over HTTP. \
                         Live events continue after {through}."
                    );
                    self.send_error(error_code::SINCE_EXPIRED, &message).await?;
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "live-updates replay failed; the client must reconnect");
                    return Err(End::with(
                        disconnect_reason::PROTOCOL,
                        CloseCode::Error,
                        "replay unavailable; reconnect with since",
                    ));
                }
            };
            let full = events.len() as i64 == REPLAY_PAGE;
            for event in events {
                after = event.id;
                let Some(topic) = Topic::parse(&event.topic) else { continue };
                let owner = event.user_id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok());
                if event.id <= self.delivered[topic as usize] || !self.viewer.sees(topic, owner) {
                    continue;
                }
                self.delivered[topic as usize] = event.id;
                let committed_at = clock::to_utc(event.created_at);
                self.write(event_message(event.id, topic, &event.kind, &event.payload, committed_at)).await?;
                self.sent[topic as usize].inc();
            }
            if !full {
                break;
            }
        }
        for topic in replayable.iter() {
            let delivered = &mut self.delivered[topic as usize];
            *delivered = (*delivered).max(through);
        }
        Ok(())
    }

    /// Looks the user up again, so a session never re-attaches with a role the user no
    /// longer has (or at all, once the user is deleted).
    async fn reauthorize(&mut self) -> Result<(), End> {
        let Some(id) = self.viewer.user_id() else { return Ok(()) };
        match self.db.run(FindActiveUser { id }).await {
            Ok(Some(user)) => {
                let viewer = Viewer::User { id, role: user.role };
                if viewer != self.viewer {
                    self.on_outbound(Outbound::ViewerChanged(viewer)).await?;
                }
                Ok(())
            }
            Ok(None) => Err(user_deleted()),
            Err(error) => {
                tracing::warn!(%error, "cannot confirm a live subscriber's permissions; closing");
                Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Error, "permissions unavailable; reconnect"))
            }
        }
    }

    /// Joins the hub again after it let go (restart, missed events, or a queue that filled
    /// while this session was replaying) and replays whatever came in between.
    async fn rejoin(&mut self) -> Result<(), End> {
        // The hub let go of this session; it may have been just when the user changed.
        self.membership.hub.do_send(Detach(self.membership.id));
        self.reauthorize().await?;
        for attempt in 0..REJOIN_ATTEMPTS {
            let attach = Attach { viewer: self.viewer, topics: self.topics, rejoining: true };
            match self.membership.hub.send(attach).timeout(HUB_TIMEOUT).await {
                Ok(Ok(Attached { id, queue, kick, position })) => {
                    self.membership.id = id;
                    self.queue = queue;
                    self.kick = kick;
                    self.replay(self.topics, position).await?;
                    match self.kick.reason() {
                        // The queue filled during the replay: that was our doing, not the client's.
                        Some(Detached::SlowConsumer | Detached::Resync) => continue,
                        Some(Detached::UserDeleted) => return Err(user_deleted()),
                        None => return Ok(()),
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt + 1))).await,
            }
        }
        Err(End::with(disconnect_reason::PROTOCOL, CloseCode::Error, "live updates unavailable; reconnect"))
    }
}
