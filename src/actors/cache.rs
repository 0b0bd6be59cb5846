//! The Cache actor: cache-aside for products and authenticated users. It owns an LRU
//! with a TTL, runs at most one database load per key at a time (single flight: every
//! concurrent miss waits for that load), and never lets a load that began before an
//! invalidation fill the cache (each load is tracked by id; an invalidation detaches it).
//! Each entry keeps the event position observed before its load (`event_position`), so a
//! hit answers the position the entry was loaded at, whoever asked for the load.

use std::{collections::HashMap, future::Future, num::NonZeroUsize, sync::Arc, time::Duration, time::Instant};

use actix::{Addr, Context, Handler, Message, MessageResult, Supervisor};
use lru::LruCache;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    db_executor::DbGateway,
    event_position::Positioned,
    restarts::ActorRestarts,
    shards::Shards,
    supervision::{guarded, guarded_then, supervised_actor, RestartReporter, SupervisedActor, Supervision, Unstarted},
};
use crate::db::{error::Unavailable, DbError};
pub use crate::domain::cache_key::CacheKey;
use crate::domain::cache_key::StaleEntries;
use crate::{
    db::{catalog::GetProduct, users::FindActiveUser},
    domain::{catalog::RenderedProduct, user::User},
    metrics::Metrics,
};

const ACTOR: &str = super::names::CACHE;
/// Messages each cache actor's mailbox holds (reads ask with `send`; it survives restarts).
const MAILBOX_CAPACITY: usize = 1024;
/// A miss (404) is remembered only briefly: the thing may be created soon.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum CachedItem {
    /// Rendered once when loaded: a hit hands out shared bytes, it serialises nothing.
    Product(Option<RenderedProduct>),
    User(Option<User>),
}

/// What an entry holds: the item, and the event position observed before it was loaded.
pub type Cached = Positioned<CachedItem>;

impl CachedItem {
    fn is_negative(&self) -> bool {
        matches!(self, Self::Product(None) | Self::User(None))
    }
}

async fn load(db: &DbGateway, key: &CacheKey) -> Result<Cached, DbError> {
    match *key {
        CacheKey::Product(id) => {
            let product = db.read_positioned(GetProduct { id }).await?;
            let rendered = product.value.as_ref().map(RenderedProduct::of).transpose();
            let rendered = rendered.map_err(|error| DbError::Internal(format!("rendering a product: {error}")))?;
            Ok(Positioned { value: CachedItem::Product(rendered), position: product.position })
        }
        CacheKey::User(id) => Ok(db.read_positioned(FindActiveUser { id }).await?.map(CachedItem::User)),
    }
}

struct Entry {
    value: Cached,
    expires: Instant,
}

type Waiter = oneshot::Sender<Option<Cached>>;

/// The bookkeeping both tiers share: entries in an LRU with a TTL, and single flight — the
/// one load (by id) allowed to fill each key, and everyone waiting on each load. An
/// invalidation detaches the key's load, so a value that may predate the write never
/// fills the tier.
struct Tier {
    ttl: Duration,
    entries: LruCache<CacheKey, Entry>,
    /// The load currently allowed to fill each key.
    in_flight: HashMap<CacheKey, u64>,
    /// Everyone waiting on each running load, detached or not.
    waiters: HashMap<u64, Vec<Waiter>>,
    next_load: u64,
    metrics: Arc<Metrics>,
    /// Whether `storefront_cache_entries` counts this tier's entries: the shared cache's
    /// are counted, the near copies are not.
    counts_entries: bool,
}

impl Tier {
    fn new(capacity: NonZeroUsize, ttl: Duration, metrics: Arc<Metrics>, counts_entries: bool) -> Self {
        Self {
            ttl,
            entries: LruCache::new(capacity),
            in_flight: HashMap::new(),
            waiters: HashMap::new(),
            next_load: 0,
            metrics,
            counts_entries,
        }
    }

    fn count(&self, key: &CacheKey, result: &str) {
        self.metrics.cache_requests.with_label_values(&[key.cache(), result]).inc();
    }

    fn gauge(&self, key: &CacheKey) -> Option<prometheus::IntGauge> {
        self.counts_entries.then(|| self.metrics.cache_entries.with_label_values(&[key.cache()]))
    }

    fn remove(&mut self, key: &CacheKey) {
        if self.entries.pop(key).is_some() {
            self.gauge(key).inspect(prometheus::IntGauge::dec);
        }
    }

    fn insert(&mut self, key: CacheKey, entry: Entry) {
        let gauge = self.gauge(&key);
        match self.entries.push(key.clone(), entry) {
            // Replaced the same key: the count stands.
            Some((old, _)) if old == key => {}
            // Evicted the least recently used entry to make room.
            Some((evicted, _)) => {
                self.gauge(&evicted).inspect(prometheus::IntGauge::dec);
                gauge.inspect(prometheus::IntGauge::inc);
            }
            None => {
                gauge.inspect(prometheus::IntGauge::inc);
            }
        }
    }

    /// A fresh entry, or a wait on the load already running for the key; otherwise a wait
    /// on a new load, whose id the caller gets to start it (and to `finish` it).
    fn lookup(&mut self, key: &CacheKey) -> (Lookup, Option<u64>) {
        let now = Instant::now();
        match self.entries.get(key) {
            Some(entry) if entry.expires > now => {
                let value = entry.value.clone();
                self.count(key, "hit");
                return (Lookup::Ready(value), None);
            }
            Some(_) => self.remove(key),
            None => {}
        }
        let (tx, rx) = oneshot::channel();
        if let Some(load) = self.in_flight.get(key) {
            self.waiters.entry(*load).or_default().push(tx);
            self.count(key, "coalesced");
            return (Lookup::Pending(rx), None);
        }
        let load_id = self.next_load;
        self.next_load += 1;
        self.in_flight.insert(key.clone(), load_id);
        self.waiters.insert(load_id, vec![tx]);
        (Lookup::Pending(rx), Some(load_id))
    }

    fn finish(&mut self, load_id: u64, key: CacheKey, value: Option<Cached>) {
        for waiter in self.waiters.remove(&load_id).unwrap_or_default() {
            let _ = waiter.send(value.clone());
        }
        // Only the load still attached to the key may fill it: an invalidation in between
        // detached this one, and its value may predate the write.
        if self.in_flight.get(&key) != Some(&load_id) {
            return;
        }
        self.in_flight.remove(&key);
        if let Some(value) = value {
            let ttl = if value.value.is_negative() { NEGATIVE_TTL.min(self.ttl) } else { self.ttl };
            self.insert(key, Entry { value, expires: Instant::now() + ttl });
        }
    }

    fn invalidate(&mut self, key: &CacheKey) {
        self.remove(key);
        self.in_flight.remove(key);
    }

    fn reset(&mut self) {
        self.entries.clear();
        if self.counts_entries {
            for cache in ["products", "users"] {
                self.metrics.cache_entries.with_label_values(&[cache]).set(0);
            }
        }
        self.in_flight.clear();
        // Dropping the senders tells every waiter to read for itself.
        self.waiters.clear();
    }
}

/// A cache actor built on a `Tier`: what differs between the two is where a miss goes.
trait TierActor: SupervisedActor {
    fn tier(&mut self) -> &mut Tier;
    /// The read that fills a new load.
    fn fetch(&mut self, key: CacheKey) -> impl Future<Output = Result<Cached, DbError>> + 'static;
}

/// `Get`, `Invalidate` and `Clear` for a tier actor, each under its panic guard.
macro_rules! tier_handlers {
    ($actor:ty) => {
        impl Handler<Get> for $actor {
            type Result = MessageResult<Get>;
            fn handle(&mut self, msg: Get, ctx: &mut Context<Self>) -> Self::Result {
                MessageResult(guarded(self, ctx, |act, ctx| lookup(act, msg.0, msg.1, ctx)))
            }
        }

        impl Handler<Invalidate> for $actor {
            type Result = ();
            fn handle(&mut self, msg: Invalidate, ctx: &mut Context<Self>) {
                guarded(self, ctx, |act, _| act.tier().invalidate(&msg.0));
            }
        }

        impl Handler<Clear> for $actor {
            type Result = ();
            fn handle(&mut self, _msg: Clear, ctx: &mut Context<Self>) {
                guarded(self, ctx, |act, _| act.tier().reset());
            }
        }
    };
}

fn lookup<A: TierActor>(act: &mut A, key: CacheKey, span: tracing::Span, ctx: &mut Context<A>) -> Lookup {
    let (lookup, new_load) = act.tier().lookup(&key);
    if let Some(load_id) = new_load {
        let fetching = act.fetch(key.clone()).instrument(span);
        guarded_then(ctx, fetching, move |outcome, act: &mut A, _| act.tier().finish(load_id, key, outcome.ok()));
    }
    lookup
}

pub struct Cache {
    /// Where loads go. Its executors drop the entries their writes make stale, so it was
    /// started after this cache's address existed (see `UnstartedCache`).
    db: DbGateway,
    tier: Tier,
    supervision: Supervision,
    /// The near shards in front of this cache, emptied with it after a panic.
    near: Shards<NearCache>,
}

impl TierActor for Cache {
    fn tier(&mut self) -> &mut Tier {
        &mut self.tier
    }

    fn fetch(&mut self, key: CacheKey) -> impl Future<Output = Result<Cached, DbError>> + 'static {
        self.tier.count(&key, "miss");
        self.tier.metrics.cache_loads.with_label_values(&[key.cache()]).inc();
        let db = self.db.clone();
        async move { load(&db, &key).await }
    }
}

supervised_actor!(Cache);
tier_handlers!(Cache);

impl SupervisedActor for Cache {
    fn recover(&mut self, _ctx: &mut Context<Self>) {
        self.tier.reset();
        // What the near shards copied came from the state that just panicked.
        for near in self.near.each() {
            near.do_send(Clear);
        }
    }

    fn report_state(&mut self) -> serde_json::Value {
        self.state()
    }
}

pub enum Lookup {
    Ready(Cached),
    Pending(oneshot::Receiver<Option<Cached>>),
}

/// A read, carrying the span of the request that asked, so a load it starts logs with
/// that request's id.
#[derive(Message)]
#[rtype(result = "Option<Lookup>")]
struct Get(CacheKey, tracing::Span);

#[derive(Message)]
#[rtype(result = "()")]
struct Invalidate(CacheKey);

#[derive(Message)]
#[rtype(result = "()")]
struct Clear;

/// The cache's actors: the shared `Cache` and one `NearCache` shard per HTTP worker (none
/// of either with `CACHE_CAPACITY=0`). Its addresses exist before the DbGateway, whose
/// executors hold a copy (as `StaleEntries`) to drop the entries a write made stale before
/// the writer is answered.
#[derive(Clone)]
pub struct CacheTiers {
    shared: Option<Addr<Cache>>,
    near: Shards<NearCache>,
    ttl: Duration,
    capacity: Option<NonZeroUsize>,
    /// While the cache backs off from restarting (it panicked too often), reads bypass it.
    restarts: Arc<ActorRestarts>,
}

impl CacheTiers {
    /// The tiers' addresses, for the gateway to be built with; the shared cache runs once
    /// `UnstartedCache::start` gives it that gateway.
    pub fn prepare(
        capacity: Option<NonZeroUsize>,
        ttl: Duration,
        http_workers: usize,
        metrics: Arc<Metrics>,
        reporter: RestartReporter,
    ) -> (Self, UnstartedCache) {
        let near = Shards::new(if capacity.is_some() { http_workers } else { 1 });
        let restarts = reporter.restarts_of(ACTOR);
        let shared = capacity.map(|capacity| {
            let cache = Unstarted::new().with_mailbox_capacity(MAILBOX_CAPACITY);
            let tier = Tier::new(capacity, ttl, metrics, true);
            (cache, tier, reporter.supervision(ACTOR))
        });
        let tiers = Self {
            shared: shared.as_ref().map(|(cache, ..)| cache.address()),
            near: near.clone(),
            ttl,
            capacity,
            restarts,
        };
        (tiers, UnstartedCache { shared, near })
    }

    /// Forgets a key in the shared cache and then in every near shard. Mailboxes are FIFO,
    /// so every read asked of any of them after this is answered after it. The shared cache
    /// goes first: a near shard that has forgotten the key and misses again asks the shared
    /// cache only after the shared cache has forgotten it too, so no stale copy comes back.
    /// It is a `do_send` on purpose: an invalidation must never be dropped for a full
    /// mailbox, and the writes and event batches sending them are bounded.
    pub fn invalidate(&self, key: CacheKey) {
        if let Some(cache) = &self.shared {
            cache.do_send(Invalidate(key.clone()));
        }
        for near in self.near.each() {
            near.do_send(Invalidate(key.clone()));
        }
    }

    /// Forgets everything (when invalidations may have been missed).
    pub fn clear(&self) {
        if let Some(cache) = &self.shared {
            cache.do_send(Clear);
        }
        for near in self.near.each() {
            near.do_send(Clear);
        }
    }
}

/// The shared cache, addressable but not yet running: it loads through the gateway, which
/// is built with the tiers' addresses (to drop what its writes make stale).
pub struct UnstartedCache {
    shared: Option<(Unstarted<Cache>, Tier, Supervision)>,
    near: Shards<NearCache>,
}

impl UnstartedCache {
    pub fn start(self, db: DbGateway) {
        if let Some((cache, tier, supervision)) = self.shared {
            cache.start(Cache { db, tier, supervision, near: self.near });
        }
    }
}

impl StaleEntries for CacheTiers {
    fn forget(&self, key: CacheKey) {
        self.invalidate(key);
    }
}

/// How handlers read through the cache. Without a cache actor (CACHE_CAPACITY=0), or when
/// it is down, slow or restarting, reads go straight to the database: the cache is never a
/// single point of failure.
///
/// Two tiers. The shared `Cache` actor is the one that loads (single flight, load ids)
/// and the one chaos crashes; each HTTP worker also runs a `NearCache` shard on its own
/// arbiter, holding copies of what its worker read, so a hit never leaves the thread. A
/// near miss asks the shared cache (one cross-thread hop, only on a miss).
#[derive(Clone)]
pub struct CacheClient {
    tiers: CacheTiers,
    /// This worker's shard; `None` off the HTTP workers (the relay) and for a worker
    /// whose shard could not join the fan-out.
    near: Option<Addr<NearCache>>,
    db: DbGateway,
    metrics: Arc<Metrics>,
    timeouts: CacheTimeouts,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheTimeouts {
    /// How long a reader waits for an actor to answer before going to the database itself.
    pub ask: Duration,
    /// How long a reader waits for a load the cache is running (a database read's worth).
    pub load: Duration,
}

impl CacheClient {
    pub fn new(tiers: CacheTiers, db: DbGateway, metrics: Arc<Metrics>, timeouts: CacheTimeouts) -> Self {
        Self { tiers, near: None, db, metrics, timeouts }
    }

    /// Starts this worker's near shard on the current arbiter (call it inside the
    /// `HttpServer::new` factory, which runs on each worker's thread) and returns a client
    /// that reads through it.
    pub fn on_this_worker(&self, reporter: RestartReporter) -> Self {
        let mut client = self.clone();
        let (Some(capacity), Some(_)) = (self.tiers.capacity, &self.tiers.shared) else { return client };
        let near = {
            let reader = self.shared_reader();
            let (ttl, supervision) = (self.tiers.ttl, reporter.supervision(ACTOR));
            Supervisor::start(move |ctx: &mut Context<NearCache>| {
                ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
                NearCache::new(reader, capacity, ttl, supervision)
            })
        };
        // A shard outside the fan-out would never hear of a write: such a worker reads
        // the shared cache directly instead.
        client.near = self.tiers.near.publish(near.clone()).then_some(near);
        client
    }

    pub fn addr(&self) -> Option<&Addr<Cache>> {
        self.tiers.shared.as_ref()
    }

    /// The near shards, for the actors page.
    pub fn shards(&self) -> &Shards<NearCache> {
        &self.tiers.near
    }

    /// A product (`None`: there is none), with the position its entry was loaded at.
    pub async fn product(&self, id: Uuid) -> Result<Positioned<Option<RenderedProduct>>, DbError> {
        let Positioned { value, position } = self.get(CacheKey::Product(id)).await?;
        match value {
            CachedItem::Product(product) => Ok(Positioned { value: product, position }),
            CachedItem::User(_) => Err(DbError::Internal("cache returned a user for a product key".into())),
        }
    }

    /// A live user (`None`: no such user, or deleted).
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, DbError> {
        Ok(self.user_with_position(id).await?.value)
    }

    /// A live user, with the position its entry was loaded at.
    pub async fn user_with_position(&self, id: Uuid) -> Result<Positioned<Option<User>>, DbError> {
        let Positioned { value, position } = self.get(CacheKey::User(id)).await?;
        match value {
            CachedItem::User(user) => Ok(Positioned { value: user, position }),
            CachedItem::Product(_) => Err(DbError::Internal("cache returned a product for a user key".into())),
        }
    }

    /// See `CacheTiers::invalidate`.
    pub fn invalidate(&self, key: CacheKey) {
        self.tiers.invalidate(key);
    }

    /// See `CacheTiers::clear`.
    pub fn clear(&self) {
        self.tiers.clear();
    }

    fn shared_reader(&self) -> SharedReader {
        SharedReader {
            cache: self.tiers.shared.clone(),
            db: self.db.clone(),
            metrics: Arc::clone(&self.metrics),
            timeouts: self.timeouts,
            restarts: Arc::clone(&self.tiers.restarts),
        }
    }

    async fn get(&self, key: CacheKey) -> Result<Cached, DbError> {
        let near = self.near.as_ref().filter(|_| !self.tiers.restarts.is_down());
        let Some(near) = near else { return self.shared_reader().read(key).await };
        // Same thread: no wake-up of another worker, no contention on a shared mailbox.
        let CacheTimeouts { ask, load } = self.timeouts;
        match near.send(Get(key.clone(), tracing::Span::current())).timeout(ask).await {
            Ok(Some(Lookup::Ready(value))) => return Ok(value),
            Ok(Some(Lookup::Pending(pending))) => {
                // The near shard waits on the shared cache, which may itself wait this long.
                match actix_rt::time::timeout(load + ask, pending).await {
                    Ok(Ok(Some(value))) => return Ok(value),
                    Ok(Ok(None)) | Err(_) => {
                        return Err(DbError::Unavailable(Unavailable::ConnectionLost));
                    }
                    // The shard restarted and dropped its waiters.
                    Ok(Err(_)) => {}
                }
            }
            Ok(None) | Err(_) => {}
        }
        self.shared_reader().read(key).await
    }
}

/// Reads through the shared cache actor, or the database when it cannot answer.
#[derive(Clone)]
struct SharedReader {
    cache: Option<Addr<Cache>>,
    db: DbGateway,
    metrics: Arc<Metrics>,
    timeouts: CacheTimeouts,
    restarts: Arc<ActorRestarts>,
}

impl SharedReader {
    async fn read(&self, key: CacheKey) -> Result<Cached, DbError> {
        let Some(cache) = &self.cache else { return load(&self.db, &key).await };
        let bypass = |reason: &str| {
            self.metrics.cache_bypass.with_label_values(&[key.cache(), reason]).inc();
        };
        if self.restarts.is_down() {
            bypass("backing_off");
            return load(&self.db, &key).await;
        }
        match cache.send(Get(key.clone(), tracing::Span::current())).timeout(self.timeouts.ask).await {
            Ok(Some(Lookup::Ready(value))) => return Ok(value),
            Ok(Some(Lookup::Pending(pending))) => match actix_rt::time::timeout(self.timeouts.load, pending).await {
                Ok(Ok(Some(value))) => return Ok(value),
                // The one shared load failed or hung: every waiter shares that answer rather
                // than stampeding a struggling database with loads of its own.
                Ok(Ok(None)) | Err(_) => {
                    return Err(DbError::Unavailable(Unavailable::ConnectionLost));
                }
                // The cache actor restarted and dropped its waiters.
                Ok(Err(_)) => bypass("restarted"),
            },
            Ok(None) | Err(_) => {
                tracing::warn!(cache = key.cache(), "cache actor unavailable; reading the database");
                bypass("unavailable");
            }
        }
        load(&self.db, &key).await
    }
}

/// A worker's own copy of what it read. It loads nothing itself: a miss asks the shared
/// `Cache` (which counts it and does the single-flight load), and concurrent misses on
/// this worker wait for that one ask. Load ids work as in `Cache`: an ask that began
/// before an invalidation never fills the shard. Hits and local waits are counted here,
/// so every lookup is still counted exactly once, and `storefront_cache_entries` stays
/// the shared cache's count (the near copies are bounded by the same capacity each).
pub struct NearCache {
    reader: SharedReader,
    tier: Tier,
    supervision: Supervision,
}

impl NearCache {
    fn new(reader: SharedReader, capacity: NonZeroUsize, ttl: Duration, supervision: Supervision) -> Self {
        let tier = Tier::new(capacity, ttl, Arc::clone(&reader.metrics), false);
        Self { reader, tier, supervision }
    }
}

impl TierActor for NearCache {
    fn tier(&mut self) -> &mut Tier {
        &mut self.tier
    }

    fn fetch(&mut self, key: CacheKey) -> impl Future<Output = Result<Cached, DbError>> + 'static {
        let reader = self.reader.clone();
        async move { reader.read(key).await }
    }
}

supervised_actor!(NearCache);
tier_handlers!(NearCache);

impl SupervisedActor for NearCache {
    fn recover(&mut self, _ctx: &mut Context<Self>) {
        self.tier.reset();
    }

    fn report_state(&mut self) -> serde_json::Value {
        serde_json::json!({"entries": self.tier.entries.len(), "loads_in_flight": self.tier.in_flight.len()})
    }
}

impl Cache {
    fn state(&self) -> serde_json::Value {
        let mut caches = serde_json::Map::new();
        for cache in ["products", "users"] {
            let count = |result: &str| self.tier.metrics.cache_requests.with_label_values(&[cache, result]).get();
            let (hits, misses, coalesced) = (count("hit"), count("miss"), count("coalesced"));
            let lookups = hits + misses + coalesced;
            let hit_ratio = (lookups > 0).then(|| hits as f64 / lookups as f64);
            caches.insert(
                cache.into(),
                serde_json::json!({
                    "entries": self.tier.metrics.cache_entries.with_label_values(&[cache]).get(),
                    "hits": hits, "misses": misses, "coalesced": coalesced, "hit_ratio": hit_ratio,
                }),
            );
        }
        serde_json::json!({
            "entries": self.tier.entries.len(), "capacity": self.tier.entries.cap().get(),
            "ttl_seconds": self.tier.ttl.as_secs(), "loads_in_flight": self.tier.in_flight.len(),
            "caches": caches,
        })
    }
}
