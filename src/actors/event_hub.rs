//! The EventHub owns who listens to what: every live-updates session attached to this
//! replica, its viewer and its topics. The EventRelay hands it each outbox event once;
//! the hub renders it once and offers it to every session allowed to see it with
//! `try_send` on the session's bounded queue. A full queue is a slow consumer, which is
//! cut loose — the hub itself never waits for anyone.
//!
//! Sessions own their position (the last event id they delivered per topic), so the
//! hub's queues are disposable: after a panic, when it finds it may have missed events, or
//! when a queue overflows, it pauses the session (closes its queue), and the session
//! resumes with a fresh one and replays from its position through the database. Nothing is
//! lost and nothing is sent twice. A paused session still counts against every limit and
//! still hears a revocation or a shutdown: it is forgotten only when it says it is gone.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
};

use actix::{Addr, AsyncContext, Context, Handler, Message, MessageResult};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::{
    db_executor::DbGateway,
    supervision::{guarded, guarded_then, supervised_actor, SupervisedActor, Supervision},
};
use crate::{
    db::{events::StoredEvent, outbox::topic as outbox_topic, users::FindActiveUser},
    domain::{
        clock,
        live::{event_message, Topic, TopicSet, Viewer},
        user::User,
    },
    websocket,
};

pub const ACTOR: &str = super::names::EVENT_HUB;

pub type SessionId = u64;

/// One rendered event, shared by every session that is sent it.
#[derive(Debug)]
pub struct Delivery {
    /// The outbox id; for `ops` events, this replica's own ops sequence.
    pub id: i64,
    pub topic: Topic,
    /// The whole WebSocket frame as sent; every session writes this same buffer (a clone
    /// is a reference).
    pub frame: Bytes,
    /// When the change committed (appended), for the delivery-latency histogram.
    pub committed_at: DateTime<Utc>,
}

/// What the hub puts on a session's queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    Event(Arc<Delivery>),
    /// The user's role changed; the session drops the topics it may no longer see.
    ViewerChanged(Viewer),
}

/// Why the hub closed a session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// Its queue overflowed: the subscriber is not taking events fast enough.
    SlowConsumer,
    /// The hub restarted or may have missed events: resume and replay.
    Resync,
    UserDeleted,
    /// The user's password, email or role changed after the session's token was issued.
    TokenRevoked,
    /// The replica is shutting down.
    Shutdown,
}

impl Detached {
    /// Whether the session must end (rather than resume with a fresh queue).
    pub fn ends_session(self) -> bool {
        matches!(self, Self::UserDeleted | Self::TokenRevoked | Self::Shutdown)
    }

    fn code(self) -> u8 {
        match self {
            Self::SlowConsumer => 1,
            Self::Resync => 2,
            Self::UserDeleted => 3,
            Self::TokenRevoked => 4,
            Self::Shutdown => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        [Self::SlowConsumer, Self::Resync, Self::UserDeleted, Self::TokenRevoked, Self::Shutdown]
            .into_iter()
            .find(|reason| reason.code() == code)
    }
}

/// The hub's word to one session, readable without a queue slot (the queue may be full).
/// One per session for its whole life: a pause is cleared when the session resumes; a
/// reason that ends the session overrides any pause and is never cleared.
#[derive(Debug, Default)]
pub struct Kick {
    reason: AtomicU8,
    notify: Notify,
}

impl Kick {
    fn fire(&self, reason: Detached) {
        if reason.ends_session() {
            self.reason.store(reason.code(), Ordering::Release);
        } else {
            // A pause never hides an end, nor another pause not yet handled.
            let _ = self.reason.compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        }
        self.notify.notify_one();
    }

    /// The session has a fresh queue: a pause is over (an end is not).
    fn resume(&self) -> bool {
        let current = self.reason.load(Ordering::Acquire);
        match Detached::from_code(current) {
            Some(reason) if reason.ends_session() => false,
            _ => {
                let _ = self.reason.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire);
                true
            }
        }
    }

    pub fn reason(&self) -> Option<Detached> {
        Detached::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Resolves after the hub's next word (at once if one came since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub max_connections: usize,
    /// `max_connections` was lowered to what the open-file limit leaves: refusals at it
    /// are for want of descriptors.
    pub limited_by_descriptors: bool,
    pub max_connections_per_user: usize,
    /// Connections without a token from one client address.
    pub max_anonymous_per_address: usize,
    /// Messages a session's queue holds before its subscriber counts as slow.
    pub max_pending: usize,
}

struct Subscriber {
    viewer: Viewer,
    /// The token generation the session was opened with (signed-in viewers only).
    generation: Option<i64>,
    /// The client address of an anonymous session, for the per-address limit.
    anonymous_from: Option<IpAddr>,
    topics: TopicSet,
    /// `None` while paused: the session resumes with a fresh queue.
    queue: Option<mpsc::Sender<Outbound>>,
    kick: Arc<Kick>,
}

pub struct EventHub {
    sessions: HashMap<SessionId, Subscriber>,
    /// The sessions of each signed-in user, for the per-user limit and for user changes
    /// (without a scan over every session).
    by_user: HashMap<Uuid, Vec<SessionId>>,
    anonymous_by_address: HashMap<IpAddr, usize>,
    next_id: SessionId,
    /// The newest outbox id handed to sessions: a session attaching now replays up to it
    /// and receives everything after it live. Kept across restarts (it only grows).
    position: i64,
    /// The last id of the batch being handed out, so a panic mid-batch leaves the rest of
    /// it to the sessions' replay instead of waiting for the next batch.
    pending_through: i64,
    ops_sequence: i64,
    limits: HubLimits,
    shutting_down: bool,
    /// When sessions that vanished without a word were last looked for (at the cap).
    last_sweep: Option<std::time::Instant>,
    db: DbGateway,
    supervision: Supervision,
}

impl EventHub {
    pub fn new(limits: HubLimits, start_position: i64, db: DbGateway, supervision: Supervision) -> Self {
        Self {
            sessions: HashMap::new(),
            by_user: HashMap::new(),
            anonymous_by_address: HashMap::new(),
            next_id: 1,
            position: start_position,
            pending_through: start_position,
            ops_sequence: 0,
            limits,
            shutting_down: false,
            last_sweep: None,
            db,
            supervision,
        }
    }

    fn connections_of(&self, user: Uuid) -> usize {
        self.by_user.get(&user).map_or(0, Vec::len)
    }

    fn sessions_of(&self, user: Uuid) -> Vec<SessionId> {
        self.by_user.get(&user).cloned().unwrap_or_default()
    }

    fn add_session(&mut self, id: SessionId, subscriber: Subscriber) {
        if let Some(user) = subscriber.viewer.user_id() {
            self.by_user.entry(user).or_default().push(id);
        }
        if let Some(address) = subscriber.anonymous_from {
            *self.anonymous_by_address.entry(address).or_default() += 1;
        }
        self.sessions.insert(id, subscriber);
    }

    fn remove_session(&mut self, id: SessionId) -> Option<Subscriber> {
        let subscriber = self.sessions.remove(&id)?;
        if let Some(user) = subscriber.viewer.user_id() {
            if let Some(ids) = self.by_user.get_mut(&user) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_user.remove(&user);
                }
            }
        }
        if let Some(address) = subscriber.anonymous_from {
            if let Some(count) = self.anonymous_by_address.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    self.anonymous_by_address.remove(&address);
                }
            }
        }
        Some(subscriber)
    }

    fn admit(&mut self, viewer: Viewer, address: Option<IpAddr>) -> Result<(), AttachRefused> {
        let swept_lately = self.last_sweep.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1));
        if self.sessions.len() >= self.limits.max_connections && !swept_lately {
            // A session whose task is gone (it holds its kick while it lives) no longer
            // counts, even if its Detach went astray. At most once a second: refusals at
            // the cap must stay cheap.
            self.last_sweep = Some(std::time::Instant::now());
            let gone: Vec<SessionId> =
                self.sessions.iter().filter(|(_, s)| Arc::strong_count(&s.kick) == 1).map(|(id, _)| *id).collect();
            for id in gone {
                self.remove_session(id);
            }
        }
        if self.sessions.len() >= self.limits.max_connections {
            return Err(if self.limits.limited_by_descriptors {
                AttachRefused::OutOfDescriptors
            } else {
                AttachRefused::TooManyConnections
            });
        }
        match (viewer.user_id(), address) {
            (Some(user), _) if self.connections_of(user) >= self.limits.max_connections_per_user => {
                Err(AttachRefused::TooManyForUser)
            }
            (None, Some(address))
                if self.anonymous_by_address.get(&address).copied().unwrap_or(0)
                    >= self.limits.max_anonymous_per_address =>
            {
                Err(AttachRefused::TooManyForAddress)
            }
            _ => Ok(()),
        }
    }

    /// Closes a session's queue; the kick says why (pause or end). The session stays
    /// counted until it detaches.
    fn kick(&mut self, id: SessionId, reason: Detached) {
        if let Some(subscriber) = self.sessions.get_mut(&id) {
            // The word first: a session that finds its queue closed reads why.
            subscriber.kick.fire(reason);
            subscriber.queue = None;
        }
    }

    fn kick_all(&mut self, reason: Detached) {
        for subscriber in self.sessions.values_mut() {
            subscriber.kick.fire(reason);
            subscriber.queue = None;
        }
    }

    /// Offers one delivery to every session that may see it; cuts loose the ones whose
    /// queue is full.
    fn fan_out(&mut self, delivery: Arc<Delivery>, owner: Option<Uuid>) {
        let (mut slow, mut gone) = (Vec::new(), Vec::new());
        for (id, subscriber) in &self.sessions {
            let Some(queue) = &subscriber.queue else { continue };
            if !subscriber.topics.contains(delivery.topic) || !subscriber.viewer.sees(delivery.topic, owner) {
                continue;
            }
            match queue.try_send(Outbound::Event(Arc::clone(&delivery))) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(*id),
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in slow {
            self.kick(id, Detached::SlowConsumer);
        }
        for id in gone {
            self.remove_session(id);
        }
    }

    fn publish(&mut self, after: i64, events: Vec<StoredEvent>, ctx: &mut Context<Self>) {
        if after > self.position {
            // Events between our position and `after` never reached us (a batch lost in a
            // panic): every session replays them from the database.
            tracing::warn!(position = self.position, after, "event hub missed events; sessions resync");
            self.position = after;
            self.kick_all(Detached::Resync);
        }
        self.pending_through = self.pending_through.max(events.last().map_or(self.position, |event| event.id));
        for event in events {
            if event.id <= self.position {
                continue;
            }
            // Advanced before fan-out, so a panic mid-way leaves the event to the replay of
            // the sessions that did not get it.
            self.position = event.id;
            let owner = event.user_id.as_deref().and_then(|id| Uuid::parse_str(id).ok());
            if event.topic == outbox_topic::USERS {
                if let Some(user) = owner {
                    self.recheck_user(user, ctx);
                }
                continue;
            }
            let Some(topic) = Topic::parse(&event.topic) else { continue };
            let committed_at = clock::to_utc(event.created_at);
            let frame = websocket::text(&event_message(event.id, topic, &event.kind, &event.payload, committed_at));
            self.fan_out(Arc::new(Delivery { id: event.id, topic, frame, committed_at }), owner);
        }
    }

    /// A user changed: look the user up again, so deleted users lose their connections and
    /// demoted ones what their new role may not see.
    fn recheck_user(&mut self, user: Uuid, ctx: &mut Context<Self>) {
        if self.connections_of(user) == 0 {
            return;
        }
        let db = self.db.clone();
        guarded_then(ctx, async move { db.run(FindActiveUser { id: user }).await }, move |found, act, _| match found {
            Ok(found) => act.apply_user(user, found),
            Err(error) => {
                // Each session looks the user up again when it re-attaches, and closes if
                // it cannot.
                tracing::warn!(%error, %user, "cannot re-check a changed user; their sessions re-attach");
                act.drop_user(user, Detached::Resync);
            }
        });
    }

    fn apply_user(&mut self, user: Uuid, found: Option<User>) {
        let Some(found) = found else {
            self.drop_user(user, Detached::UserDeleted);
            return;
        };
        let viewer = Viewer::User { id: user, role: found.role };
        let mut slow = Vec::new();
        for id in self.sessions_of(user) {
            let Some(subscriber) = self.sessions.get_mut(&id) else { continue };
            if subscriber.generation.is_some_and(|generation| generation != found.token_generation) {
                self.kick(id, Detached::TokenRevoked);
                continue;
            }
            if subscriber.viewer == viewer {
                continue;
            }
            subscriber.viewer = viewer;
            for topic in subscriber.topics.iter().filter(|topic| !viewer.may_subscribe(*topic)) {
                subscriber.topics.remove(topic);
            }
            // A paused session looks the user up again when it resumes.
            let told =
                subscriber.queue.as_ref().is_none_or(|queue| queue.try_send(Outbound::ViewerChanged(viewer)).is_ok());
            if !told {
                slow.push(id);
            }
        }
        for id in slow {
            self.kick(id, Detached::SlowConsumer);
        }
    }

    fn drop_user(&mut self, user: Uuid, reason: Detached) {
        for id in self.sessions_of(user) {
            self.kick(id, reason);
        }
    }
}

supervised_actor!(EventHub);

impl SupervisedActor for EventHub {
    fn recover(&mut self, _ctx: &mut Context<Self>) {
        // Whatever the panic left half-done, the sessions know what they delivered: they
        // resume and replay up to the end of the batch that was being handed out. Who is
        // connected is kept: it is what the limits count.
        self.position = self.position.max(self.pending_through);
        self.kick_all(Detached::Resync);
    }

    fn report_state(&mut self) -> serde_json::Value {
        let mut by_topic = serde_json::Map::new();
        for topic in Topic::ALL {
            let count = self.sessions.values().filter(|subscriber| subscriber.topics.contains(topic)).count();
            by_topic.insert(topic.name().to_owned(), count.into());
        }
        serde_json::json!({
            "connections": self.sessions.len(),
            "max_connections": self.limits.max_connections,
            "anonymous_addresses": self.anonymous_by_address.len(),
            "subscriptions": by_topic,
            "last_event_id": self.position,
            "ops_events": self.ops_sequence,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachRefused {
    /// `WS_MAX_CONNECTIONS` reached.
    TooManyConnections,
    /// The cap the open-file limit left reached.
    OutOfDescriptors,
    TooManyForUser,
    TooManyForAddress,
    ShuttingDown,
}

/// A new connection asks to join: it is counted against every limit until it detaches.
pub struct Attach {
    pub viewer: Viewer,
    /// The generation of the token that opened the session (signed-in viewers).
    pub generation: Option<i64>,
    /// The client's address, as the rate limiter sees it.
    pub address: Option<IpAddr>,
}

/// A session's place in the hub: however it is dropped (the session ended, or its
/// handshake was never answered), the hub stops counting it.
pub struct Membership {
    hub: Addr<EventHub>,
    id: SessionId,
}

impl Membership {
    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn hub(&self) -> &Addr<EventHub> {
        &self.hub
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Fire and forget: a lost Detach would leave the session counted (the cap's
        // sweep would find it only later).
        self.hub.do_send(Detach(self.id));
    }
}

pub struct Attached {
    pub membership: Membership,
    pub queue: mpsc::Receiver<Outbound>,
    pub kick: Arc<Kick>,
    /// Everything up to here is the session's to replay; everything after arrives live.
    pub position: i64,
}

impl Message for Attach {
    type Result = Result<Attached, AttachRefused>;
}

impl Handler<Attach> for EventHub {
    type Result = MessageResult<Attach>;
    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        let hub = ctx.address();
        let attached = guarded(self, ctx, |act, _| {
            if act.shutting_down {
                return Err(AttachRefused::ShuttingDown);
            }
            act.admit(msg.viewer, msg.address)?;
            let (sender, queue) = mpsc::channel(act.limits.max_pending);
            let kick = Arc::new(Kick::default());
            let id = act.next_id;
            act.next_id += 1;
            // Anonymous sessions count against their address (an unknown one too).
            let anonymous_from = msg
                .viewer
                .user_id()
                .is_none()
                .then(|| msg.address.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
            let subscriber = Subscriber {
                viewer: msg.viewer,
                generation: msg.generation,
                anonymous_from,
                topics: TopicSet::default(),
                queue: Some(sender),
                kick: Arc::clone(&kick),
            };
            act.add_session(id, subscriber);
            let membership = Membership { hub, id };
            Ok(Attached { membership, queue, kick, position: act.position })
        });
        // A panic here already restarted the hub; the caller tries again.
        MessageResult(attached.unwrap_or(Err(AttachRefused::TooManyConnections)))
    }
}

/// A paused session asks for a fresh queue, with the topics it holds. `None`: the hub
/// no longer knows it, or it is to end (its kick says why).
pub struct Resume {
    pub id: SessionId,
    pub topics: TopicSet,
}

pub struct Resumed {
    pub queue: mpsc::Receiver<Outbound>,
    /// Everything up to here is the session's to replay; everything after arrives live.
    pub position: i64,
}

impl Message for Resume {
    type Result = Option<Resumed>;
}

impl Handler<Resume> for EventHub {
    type Result = MessageResult<Resume>;
    fn handle(&mut self, msg: Resume, ctx: &mut Context<Self>) -> Self::Result {
        let resumed = guarded(self, ctx, |act, _| {
            let max_pending = act.limits.max_pending;
            let subscriber = act.sessions.get_mut(&msg.id)?;
            if !subscriber.kick.resume() {
                return None;
            }
            let (sender, queue) = mpsc::channel(max_pending);
            subscriber.queue = Some(sender);
            subscriber.topics = msg.topics;
            Some(Resumed { queue, position: act.position })
        });
        MessageResult(resumed.flatten())
    }
}

/// Replaces a session's topics; answers the position the change took effect at.
#[derive(Message)]
#[rtype(result = "Option<i64>")]
pub struct SetTopics {
    pub id: SessionId,
    pub topics: TopicSet,
}

impl Handler<SetTopics> for EventHub {
    type Result = Option<i64>;
    fn handle(&mut self, msg: SetTopics, ctx: &mut Context<Self>) -> Option<i64> {
        guarded(self, ctx, |act, _| {
            let subscriber = act.sessions.get_mut(&msg.id)?;
            subscriber.topics = msg.topics;
            Some(act.position)
        })
        .flatten()
    }
}

/// The replica is stopping: every session closes (1001) and no new one is admitted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutDown;

impl Handler<ShutDown> for EventHub {
    type Result = ();
    fn handle(&mut self, _msg: ShutDown, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.shutting_down = true;
            act.kick_all(Detached::Shutdown);
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach(pub SessionId);

impl Handler<Detach> for EventHub {
    type Result = ();
    fn handle(&mut self, msg: Detach, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.remove_session(msg.0);
        });
    }
}

/// Events the relay read from the outbox: every id in `(after, last]` that committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub after: i64,
    pub events: Vec<StoredEvent>,
}

impl Handler<Publish> for EventHub {
    type Result = ();
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, ctx| act.publish(msg.after, msg.events, ctx));
    }
}

/// Something operators should see on the `ops` topic (not in the outbox: these must flow
/// while the database is down).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct OpsEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl Handler<OpsEvent> for EventHub {
    type Result = ();
    fn handle(&mut self, msg: OpsEvent, ctx: &mut Context<Self>) {
        guarded(self, ctx, |act, _| {
            act.ops_sequence += 1;
            let at = Utc::now();
            let frame =
                websocket::text(&event_message(act.ops_sequence, Topic::Ops, msg.kind, &msg.data.to_string(), at));
            act.fan_out(Arc::new(Delivery { id: act.ops_sequence, topic: Topic::Ops, frame, committed_at: at }), None);
        });
    }
}
