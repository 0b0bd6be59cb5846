//! One live-updates connection after its handshake: a single task that owns the socket,
//! its subscriptions, its position (the last event id it delivered on each topic) and the
//! receiving end of its bounded queue.
//!
//! Everything a session sends is in id order per topic and never twice: replayed events
//! come from the database up to the hub's position at the moment of (re)subscribing, live
//! ones from the queue, and anything at or below the session's position is skipped.
//!
//! What a connection holds is bounded whatever the client does: once the socket is backed
//! up (`WsSocket::backed_up`) the session takes no more live events (the hub's queue then
//! fills and the hub pauses it) and reads nothing more from the client (so TCP pushes
//! back on it); a replay reads its next page only once the socket has taken the last one
//! down to `REPLAY_ROOM`, and pages are bounded in bytes. A client whose socket takes
//! nothing for `STALL_LIMIT` while bytes wait is a slow consumer, replaying or not. The
//! deadlines are checked on every turn, so no flood of frames can postpone them.

use std::{future::poll_fn, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus::IntCounter;
use tokio::{sync::mpsc, time::Instant};

use super::socket::{ReadEnd, WsSocket};
use crate::{
    actors::{
        event_hub::{Attached, Delivery, Detached, Kick, Membership, Outbound, Resume, Resumed, SetTopics},
        DbGateway,
    },
    db::{
        events::{Replay, ReplayPage},
        users::FindActiveUser,
    },
    domain::{
        clock,
        live::{
            error_code, error_message, event_message, parse_command, subscribed_message, Command, CommandBudget, Topic,
            TopicSet, Viewer,
        },
    },
    metrics::{disconnect_reason, Metrics},
    websocket::{self, close_code, Incoming, Violation},
};

const HUB_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a session asks a hub that does not answer (restarting) again.
const RETRY_ATTEMPTS: u32 = 20;
/// A replay reads its next page once no more than this is still queued.
pub const REPLAY_ROOM: usize = 16 * 1024;
/// A replay page's payloads in bytes (at least one event, however large).
pub const REPLAY_PAGE_BYTES: usize = 32 * 1024;
const REPLAY_PAGE_ROWS: i64 = 256;
/// How long the socket may take nothing while bytes wait before the client counts as not
/// reading.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// How long the closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Refused commands in a row after which the connection is closed.
const REFUSALS_TOLERATED: u32 = 10;

/// Everything a granted handshake hands to the connection (dropped unused, its
/// membership gives the hub its place back).
pub struct SessionSetup {
    pub db: DbGateway,
    pub metrics: Arc<Metrics>,
    pub viewer: Viewer,
    /// The generation of the token that opened the connection (signed-in viewers).
    pub generation: Option<i64>,
    /// When the token that opened the connection expires.
    pub token_expires_at: Option<DateTime<Utc>>,
    pub attached: Attached,
    pub ping_interval: Duration,
    /// Counted from the moment the hub admits the connection, so the gauge agrees with
    /// the hub's count before the session's task first runs.
    pub open: OpenConnection,
}

/// How and why the connection ends.
struct End {
    reason: &'static str,
    close: Option<(u16, &'static str)>,
}

impl End {
    fn with(reason: &'static str, code: u16, text: &'static str) -> Self {
        Self { reason, close: Some((code, text)) }
    }

    /// The socket is gone or unwritable: nothing more can be said.
    fn gone(reason: &'static str) -> Self {
        Self { reason, close: None }
    }
}

fn slow_consumer() -> End {
    End::with(disconnect_reason::SLOW_CONSUMER, close_code::POLICY_VIOLATION, "slow consumer")
}

fn unavailable() -> End {
    End::with(disconnect_reason::PROTOCOL, close_code::INTERNAL_ERROR, "live updates unavailable; reconnect")
}

fn violation(violation: Violation) -> End {
    let reason = match violation {
        Violation::TooBig => disconnect_reason::FRAME_TOO_BIG,
        _ => disconnect_reason::PROTOCOL,
    };
    End::with(reason, violation.close_code(), violation.reason())
}

/// Why the hub let go, as the client is told.
fn kicked(reason: Detached) -> End {
    match reason {
        Detached::UserDeleted => {
            End::with(disconnect_reason::USER_DELETED, close_code::POLICY_VIOLATION, "user deleted")
        }
        Detached::TokenRevoked => {
            End::with(disconnect_reason::TOKEN_REVOKED, close_code::POLICY_VIOLATION, "token revoked")
        }
        Detached::Shutdown => End::with(disconnect_reason::SHUTDOWN, close_code::GOING_AWAY, "server shutting down"),
        Detached::SlowConsumer | Detached::Resync => slow_consumer(),
    }
}

/// Counts the connection as open for as long as it lives, however its task ends.
pub struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    pub fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.ws_connections.inc();
        Self(Arc::clone(metrics))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.ws_connections.dec();
    }
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

/// Where a replay stands: events on `topics` after `after`, through `through`.
struct ReplayCursor {
    topics: TopicSet,
    after: i64,
    through: i64,
}

/// What woke the session.
enum Step {
    Message(Incoming),
    ReadEnded(ReadEnd),
    WriteFailed,
    /// The socket took enough of what was queued.
    Room,
    Outbound(Option<Outbound>),
    /// The hub said something (a pause or an end).
    Kicked,
    Deadline,
}

struct LiveSession {
    socket: WsSocket,
    db: DbGateway,
    metrics: Arc<Metrics>,
    /// `ws_events_sent_total` per topic (indexed by `Topic as usize`), looked up once
    /// rather than per event.
    sent: [IntCounter; 4],
    viewer: Viewer,
    generation: Option<i64>,
    membership: Membership,
    queue: mpsc::Receiver<Outbound>,
    kick: Arc<Kick>,
    /// The hub paused this session (its queue is closed) and it has not resumed yet.
    paused: bool,
    topics: TopicSet,
    /// The last event id delivered per topic (indexed by `Topic as usize`).
    delivered: [i64; 4],
    replay: Option<ReplayCursor>,
    /// The hub paused the session while a replay ran: resume once it is done.
    resume_after_replay: bool,
    /// A command that arrived during a replay, handled once the replay is done.
    deferred: Option<String>,
    /// The latest ping's payload, answered once the socket has caught up (RFC 6455
    /// §5.5.3 lets an endpoint answer only the most recent ping).
    pending_pong: Option<Bytes>,
    overflows: Overflows,
    budget: CommandBudget,
    refusals: u32,
    started: Instant,
    ping_interval: Duration,
    next_ping: Instant,
    last_heard: Instant,
    token_deadline: Option<Instant>,
}

/// Serves one connection until it ends, then says goodbye as the end requires.
pub async fn run(socket: WsSocket, setup: SessionSetup) {
    let SessionSetup { db, metrics, viewer, generation, token_expires_at, attached, ping_interval, open } = setup;
    let Attached { membership, queue, kick, position } = attached;
    let sent = Topic::ALL.map(|topic| metrics.ws_events_sent.with_label_values(&[topic.name()]));
    let now = Instant::now();
    let mut session = LiveSession {
        socket,
        db,
        metrics,
        sent,
        viewer,
        generation,
        membership,
        queue,
        kick,
        paused: false,
        topics: TopicSet::default(),
        delivered: [position; 4],
        replay: None,
        resume_after_replay: false,
        deferred: None,
        pending_pong: None,
        overflows: Overflows { window_started: now, count: 0 },
        budget: CommandBudget::default(),
        refusals: 0,
        started: now,
        ping_interval,
        next_ping: now + ping_interval,
        last_heard: now,
        token_deadline: token_expires_at
            .map(|expires_at| now + (expires_at - Utc::now()).to_std().unwrap_or(Duration::ZERO)),
    };
    let end = session.serve().await;
    session.metrics.ws_disconnects.with_label_values(&[end.reason]).inc();
    if let Some((code, text)) = end.close {
        // A close waits behind nothing but a frame already begun.
        session.socket.discard_unsent();
        session.socket.send(websocket::close(code, text));
        // Boxed: only a closing connection needs room for its goodbye. The session (and
        // its place in the hub, which counts it) lives until the goodbye is said.
        Box::pin(session.socket.finish(Instant::now() + CLOSE_GRACE)).await;
    }
    drop(session);
    drop(open);
}

impl LiveSession {
    async fn serve(&mut self) -> End {
        let mut armed = self.next_deadline();
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        loop {
            match self.kick.reason() {
                Some(reason) if reason.ends_session() => return kicked(reason),
                Some(reason) if !self.paused => {
                    self.paused = true;
                    if let Err(end) = Box::pin(self.on_pause(reason)).await {
                        return end;
                    }
                    continue;
                }
                _ => {}
            }
            // On every turn, however busy the socket is: no flood of frames postpones a
            // deadline.
            if Instant::now() >= self.next_deadline() {
                if let Err(end) = self.on_deadline() {
                    return end;
                }
            }
            if self.replay.is_some() && self.socket.queued() <= REPLAY_ROOM {
                if let Err(end) = Box::pin(self.replay_next_page()).await {
                    return end;
                }
                continue;
            }
            if self.replay.is_none() {
                if let Some(command) = self.deferred.take() {
                    if let Err(end) = Box::pin(self.on_command(&command)).await {
                        return end;
                    }
                    continue;
                }
            }
            // Hand the socket what was queued since the last turn, so that in the common case
            // nothing waits and no timer needs arming.
            if self.socket.try_flush().is_err() {
                return End::gone(disconnect_reason::CLIENT);
            }
            if self.socket.queued() == 0 {
                if let Some(payload) = self.pending_pong.take() {
                    self.socket.send(websocket::pong(&payload));
                    continue;
                }
            }
            let deadline = self.next_deadline();
            if deadline != armed {
                timer.as_mut().reset(deadline);
                armed = deadline;
            }
            let backed_up = self.socket.backed_up();
            let takes_live = !self.paused && self.replay.is_none() && !backed_up;
            let room_below = match () {
                () if self.replay.is_some() => Some(REPLAY_ROOM),
                () if backed_up => Some(0),
                () => None,
            };
            // During a replay one command may wait; more are not read until it is done.
            // Nothing is read while the socket is backed up: TCP then pushes back on a
            // client that sends without reading.
            let reads = self.deferred.is_none() && !backed_up;
            // In this order: the socket (what the client sent, and writing what is queued),
            // then the queue, then the hub's kick (only while the queue is not read, which
            // otherwise ends when the hub lets go), then the one timer.
            let socket = &mut self.socket;
            let step = tokio::select! {
                biased;
                step = poll_fn(|cx| {
                    if let Poll::Ready(Err(_)) = socket.poll_flush(cx) {
                        return Poll::Ready(Step::WriteFailed);
                    }
                    if reads {
                        if let Poll::Ready(read) = socket.poll_message(cx) {
                            return Poll::Ready(match read {
                                Ok(message) => Step::Message(message),
                                Err(end) => Step::ReadEnded(end),
                            });
                        }
                    }
                    if room_below.is_some_and(|room| socket.queued() <= room) {
                        return Poll::Ready(Step::Room);
                    }
                    Poll::Pending
                }) => step,
                outbound = self.queue.recv(), if takes_live => Step::Outbound(outbound),
                () = self.kick.changed(), if !takes_live => Step::Kicked,
                () = &mut timer => Step::Deadline,
            };
            let handled = match step {
                Step::Message(message) => self.on_message(message).await,
                Step::ReadEnded(ReadEnd::Violation(refused)) => Err(violation(refused)),
                Step::ReadEnded(ReadEnd::Eof | ReadEnd::Io(_)) | Step::WriteFailed => {
                    Err(End::gone(disconnect_reason::CLIENT))
                }
                Step::Room | Step::Kicked => Ok(()),
                Step::Outbound(Some(outbound)) => self.on_outbound(outbound),
                // The hub closed the queue: the kick says why (read at the top of the loop;
                // the hub gives it before it closes the queue).
                Step::Outbound(None) if self.kick.reason().is_some() => Ok(()),
                Step::Outbound(None) => {
                    self.paused = true;
                    Box::pin(self.on_pause(Detached::Resync)).await
                }
                Step::Deadline => self.on_deadline(),
            };
            if let Err(end) = handled {
                return end;
            }
        }
    }

    /// The earliest of: the next ping, the token's expiry, and, while the socket takes
    /// nothing, when its client counts as not reading.
    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_ping;
        if let Some(expiry) = self.token_deadline {
            deadline = deadline.min(expiry);
        }
        if let Some(since) = self.socket.blocked_since() {
            deadline = deadline.min(since + STALL_LIMIT);
        }
        deadline
    }

    fn on_deadline(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if self.token_deadline.is_some_and(|expiry| expiry <= now) {
            return Err(End::with(disconnect_reason::TOKEN_EXPIRED, close_code::POLICY_VIOLATION, "token expired"));
        }
        if self.socket.blocked_since().is_some_and(|since| since + STALL_LIMIT <= now) {
            return Err(slow_consumer());
        }
        if self.next_ping <= now {
            // While a command waits out a replay nothing is read, pongs included: silence
            // then says nothing about the client.
            let silent = self.deferred.is_none() && now.duration_since(self.last_heard) > self.ping_interval * 2;
            if silent {
                // The peer answers nothing, not even pings: there is nobody to read a close.
                return Err(End::gone(disconnect_reason::HEARTBEAT));
            }
            self.socket.send(websocket::ping());
            self.next_ping = now + self.ping_interval;
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Incoming) -> Result<(), End> {
        self.last_heard = Instant::now();
        match message {
            Incoming::Text(text) if self.replay.is_some() => {
                self.deferred = Some(text);
                Ok(())
            }
            // Boxed: commands are rare, and inline their replay and hub round trips would
            // make every idle connection's task as large as the largest of them.
            Incoming::Text(text) => Box::pin(self.on_command(&text)).await,
            Incoming::Ping(payload) => {
                self.pending_pong = Some(payload);
                Ok(())
            }
            Incoming::Pong => Ok(()),
            // RFC 6455 §5.5.1: answer a close with a close, echoing its code.
            Incoming::Close(code) => {
                Err(End { reason: disconnect_reason::CLIENT, close: Some((code.unwrap_or(close_code::NORMAL), "")) })
            }
        }
    }

    async fn on_pause(&mut self, reason: Detached) -> Result<(), End> {
        match reason {
            // The queue filled (or the hub restarted) while a replay ran, which was this
            // session's doing: catch up from the database once the replay is done (a
            // client that stops reading meanwhile is judged by the stall limit).
            Detached::SlowConsumer | Detached::Resync if self.replay.is_some() => {
                self.resume_after_replay = true;
                Ok(())
            }
            // The queue filled because the client is not taking what it is sent.
            Detached::SlowConsumer if self.socket.backed_up() => Err(slow_consumer()),
            // A burst bigger than the queue reached a reading client: catch up from the
            // database, unless it keeps happening.
            Detached::SlowConsumer if self.overflows.record() => self.resume().await,
            Detached::Resync => self.resume().await,
            other => Err(kicked(other)),
        }
    }

    fn send_text(&mut self, text: &str) {
        self.socket.send(websocket::text(text));
    }

    fn send_error(&mut self, code: &str, message: &str) {
        self.send_text(&error_message(code, message));
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    async fn on_command(&mut self, text: &str) -> Result<(), End> {
        if let Err(wait) = self.budget.try_command(self.now_ns()) {
            self.refusals += 1;
            if self.refusals >= REFUSALS_TOLERATED {
                return Err(End::with(disconnect_reason::RATE_LIMITED, close_code::POLICY_VIOLATION, "rate limited"));
            }
            let message = format!(
                "Too many commands: at most {} a second (a replay counts one per {} events); retry in {} ms.",
                CommandBudget::COMMANDS_PER_SECOND,
                CommandBudget::EVENTS_PER_COMMAND,
                wait.as_millis().max(1)
            );
            self.send_error(error_code::RATE_LIMITED, &message);
            return Ok(());
        }
        self.refusals = 0;
        match parse_command(text) {
            Err(bad) => {
                self.send_error(error_code::BAD_REQUEST, &bad.0);
                Ok(())
            }
            Ok(Command::Subscribe { topics, since }) => self.subscribe(topics, since).await,
            Ok(Command::Unsubscribe { topics }) => {
                let mut remaining = self.topics;
                for topic in topics {
                    remaining.remove(topic);
                }
                let position = self.set_topics(remaining).await?;
                self.send_text(&subscribed_message(self.topics, position));
                Ok(())
            }
        }
    }

    async fn subscribe(&mut self, requested: Vec<Topic>, since: Option<i64>) -> Result<(), End> {
        let (allowed, denied): (Vec<Topic>, Vec<Topic>) =
            requested.into_iter().partition(|topic| self.viewer.may_subscribe(*topic));
        if !denied.is_empty() {
            let names: Vec<&str> = denied.iter().map(|topic| topic.name()).collect();
            self.send_error(error_code::FORBIDDEN, &format!("Not allowed for this connection: {}.", names.join(", ")));
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
        self.send_text(&subscribed_message(self.topics, position));
        if since.is_some() {
            self.start_replay(added, position);
        }
        Ok(())
    }

    /// Tells the hub which topics to offer; answers the position it took effect at.
    async fn set_topics(&mut self, topics: TopicSet) -> Result<i64, End> {
        for attempt in 0..RETRY_ATTEMPTS {
            let change = SetTopics { id: self.membership.id(), topics };
            match self.membership.hub().send(change).timeout(HUB_TIMEOUT).await {
                Ok(Some(position)) => {
                    self.topics = topics;
                    return Ok(position);
                }
                // The hub no longer knows this session.
                Ok(None) => return Err(unavailable()),
                // The hub is restarting: it keeps its sessions, so ask again.
                Err(_) => tokio::time::sleep(retry_pause(attempt)).await,
            }
        }
        Err(unavailable())
    }

    fn on_outbound(&mut self, outbound: Outbound) -> Result<(), End> {
        match outbound {
            Outbound::Event(delivery) => {
                self.deliver(&delivery);
                Ok(())
            }
            Outbound::ViewerChanged(viewer) => {
                self.viewer = viewer;
                let lost: Vec<Topic> = self.topics.iter().filter(|topic| !viewer.may_subscribe(*topic)).collect();
                if !lost.is_empty() {
                    for topic in &lost {
                        self.topics.remove(*topic);
                    }
                    let names: Vec<&str> = lost.iter().map(|topic| topic.name()).collect();
                    self.send_error(
                        error_code::FORBIDDEN,
                        &format!("Your role no longer allows: {}.", names.join(", ")),
                    );
                }
                Ok(())
            }
        }
    }

    fn deliver(&mut self, delivery: &Delivery) {
        let topic = delivery.topic;
        if !self.topics.contains(topic) {
            return;
        }
        if topic.is_replayable() {
            if delivery.id <= self.delivered[topic as usize] {
                return;
            }
            self.delivered[topic as usize] = delivery.id;
        }
        // The frame is shared by every subscriber: this clones a reference.
        self.socket.send(delivery.frame.clone());
        self.sent[topic as usize].inc();
        // Live deliveries only: a replayed event's age says nothing about delivery speed.
        let latency = (Utc::now() - delivery.committed_at).to_std().unwrap_or(Duration::ZERO);
        self.metrics.event_delivery.observe(latency.as_secs_f64());
    }

    /// Begins sending every retained event on `topics` after what this session delivered,
    /// up to `through`, a page at a time as the socket takes them.
    fn start_replay(&mut self, topics: TopicSet, through: i64) {
        let replayable: TopicSet = topics.iter().filter(|topic| topic.is_replayable()).collect();
        let Some(after) = replayable.iter().map(|topic| self.delivered[topic as usize]).min() else { return };
        match &mut self.replay {
            // Topics added while a replay runs join it: it starts again from the lowest position.
            Some(cursor) => {
                for topic in replayable.iter() {
                    cursor.topics.insert(topic);
                }
                cursor.after = cursor.after.min(after);
                cursor.through = cursor.through.max(through);
            }
            None => self.replay = Some(ReplayCursor { topics: replayable, after, through }),
        }
    }

    /// Sends the next page of the replay; ends it when the page was its last.
    async fn replay_next_page(&mut self) -> Result<(), End> {
        let Some(cursor) = &self.replay else { return Ok(()) };
        let (topics, after, through) = (cursor.topics, cursor.after, cursor.through);
        let page = ReplayPage {
            after,
            through,
            topics: topics.names(),
            owner: self.viewer.user_id().map(|id| id.to_string()),
            all_private: self.viewer.sees(Topic::Orders, None),
            max_rows: REPLAY_PAGE_ROWS,
            max_bytes: REPLAY_PAGE_BYTES,
        };
        let (events, more) = match self.db.run(page).await {
            Ok(Replay::Events { events, more }) => (events, more),
            Ok(Replay::Expired { pruned_through }) => {
                let message = format!(
                    "Events after {after} up to {pruned_through} were pruned; re-read over HTTP. \
                     Live events continue after {through}."
                );
                self.send_error(error_code::SINCE_EXPIRED, &message);
                return self.end_replay(topics, through).await;
            }
            Err(error) => {
                tracing::warn!(%error, "live-updates replay failed; the client must reconnect");
                return Err(End::with(
                    disconnect_reason::PROTOCOL,
                    close_code::INTERNAL_ERROR,
                    "replay unavailable; reconnect with since",
                ));
            }
        };
        let mut last = after;
        let count = events.len() as u64;
        for event in events {
            last = event.id;
            let Some(topic) = Topic::parse(&event.topic) else { continue };
            let owner = event.user_id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok());
            if event.id <= self.delivered[topic as usize] || !self.viewer.sees(topic, owner) {
                continue;
            }
            self.delivered[topic as usize] = event.id;
            let committed_at = clock::to_utc(event.created_at);
            self.send_text(&event_message(event.id, topic, &event.kind, &event.payload, committed_at));
            self.sent[topic as usize].inc();
        }
        self.budget.charge_events(self.now_ns(), count);
        if more && last < through {
            if let Some(cursor) = &mut self.replay {
                cursor.after = last;
            }
            return Ok(());
        }
        self.end_replay(topics, through).await
    }

    async fn end_replay(&mut self, topics: TopicSet, through: i64) -> Result<(), End> {
        self.replay = None;
        for topic in topics.iter() {
            let delivered = &mut self.delivered[topic as usize];
            *delivered = (*delivered).max(through);
        }
        if std::mem::take(&mut self.resume_after_replay) {
            return self.resume().await;
        }
        Ok(())
    }

    /// Looks the user up again, so a session never re-attaches with a role the user no
    /// longer has, with a token a password change voided, or at all once the user is gone.
    async fn reauthorize(&mut self) -> Result<(), End> {
        let Some(id) = self.viewer.user_id() else { return Ok(()) };
        match self.db.run(FindActiveUser { id }).await {
            Ok(Some(user)) if self.generation.is_some_and(|generation| generation != user.token_generation) => {
                Err(kicked(Detached::TokenRevoked))
            }
            Ok(Some(user)) => {
                let viewer = Viewer::User { id, role: user.role };
                if viewer != self.viewer {
                    self.on_outbound(Outbound::ViewerChanged(viewer))?;
                }
                Ok(())
            }
            Ok(None) => Err(kicked(Detached::UserDeleted)),
            Err(error) => {
                tracing::warn!(%error, "cannot confirm a live subscriber's permissions; closing");
                Err(End::with(
                    disconnect_reason::PROTOCOL,
                    close_code::INTERNAL_ERROR,
                    "permissions unavailable; reconnect",
                ))
            }
        }
    }

    /// Takes a fresh queue after the hub paused this session (a restart, missed events, or
    /// a queue that filled while it replayed) and replays whatever came in between.
    async fn resume(&mut self) -> Result<(), End> {
        // The hub paused this session; it may have been just when the user changed.
        self.reauthorize().await?;
        for attempt in 0..RETRY_ATTEMPTS {
            let ask = Resume { id: self.membership.id(), topics: self.topics };
            match self.membership.hub().send(ask).timeout(HUB_TIMEOUT).await {
                Ok(Some(Resumed { queue, position })) => {
                    self.queue = queue;
                    self.paused = false;
                    self.start_replay(self.topics, position);
                    return Ok(());
                }
                Ok(None) => {
                    return Err(self
                        .kick
                        .reason()
                        .filter(|reason| reason.ends_session())
                        .map_or_else(unavailable, kicked))
                }
                Err(_) => tokio::time::sleep(retry_pause(attempt)).await,
            }
        }
        Err(unavailable())
    }
}

/// How long to wait before asking a restarting hub again.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis(50 * u64::from(attempt + 1))
}
