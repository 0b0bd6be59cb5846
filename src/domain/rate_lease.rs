//! One client's bucket, decided by many deciders (the HTTP workers of a replica, the
//! replicas of a cluster) without multiplying it: leases of tokens.
//!
//! Every bucket has one **owner** holding its ledger: a GCRA TAT (`tat`, the debt of the
//! tokens spent) and the **grants** it has leased out and not had back. Locally the owner
//! is the limiter shard that the client key hashes to; with Redis it is the Redis hash of
//! the key (`actors::rate_limiter::redis` runs `Ledger::serve` there as a Lua script).
//! Any other decider (a **holder**) spends tokens of a grant it got from the owner, on its
//! own thread, with no message per request, and settles the grant when it asks for the next
//! one, when the owner recalls it, or before it expires.
//!
//! # The bound
//!
//! The owner counts every token out on lease as debt that does **not** refill:
//!
//! ```text
//! debt(now)  = max(tat − now, 0) + outstanding × interval
//! available  = (burst × interval − debt) / interval      (a request needs 1, a grant n ≤ available)
//! ```
//!
//! Take Φ = `available`, H = the tokens holders can still spend, A = requests admitted.
//! Admitting at the owner moves one token from Φ to A; granting moves n from Φ to H;
//! spending a leased token moves one from H to A; settling a grant with s spent and u unspent
//! adds s × interval to `tat` and removes the grant, so Φ gains exactly the u tokens that H
//! loses; a grant that expires unsettled counts as fully spent at its expiry (a holder never
//! spends past it: both read the same clock, and a Redis holder's expiry is measured from
//! before it asked), so Φ is unchanged and H only loses. Only time adds to Φ + H + A, at
//! most `rate` per second (the decay of `tat`). Since H ≤ outstanding, Φ + H ≤ burst at any
//! instant, so over any window of t seconds:
//!
//! ```text
//! admitted ≤ burst + rate × t          (S = 0: leases add no slack at all)
//! ```
//!
//! whatever the number of holders, their interleaving, or how messages are delayed,
//! reordered or lost (a lost message only strands tokens until the grant expires). This
//! is checked on this module with a hand-driven clock (`tests::leases_never_beat_the_bucket`).
//! What can exceed it is outside the ledger: an owner's ledger evicted by the
//! `RATE_LIMIT_MAX_KEYS` cap or dropped by a panic mid-decision (that one client starts
//! afresh), and requests let through unasked while the limiter does not answer (the
//! replica's fail-open budget).
//!
//! Honesty the other way: a token out on lease is not lost to the client. When the owner
//! finds its bucket empty while grants are out, it **recalls** them and holds the request
//! (at most `RECALL_WAIT`) until the holders settle. Holders ask for leases that grow while
//! they are used up (doubling to `LEASE_MAX_TOKENS`) and never get more than half of what is
//! available, so near the limit leases are small and tokens stay where they are needed.

use std::{
    collections::VecDeque,
    hash::{DefaultHasher, Hash, Hasher},
    num::NonZeroUsize,
    time::Duration,
};

use lru::LruCache;

use super::rate_limit::{BucketKey, Decision, Quota, Quotas};

/// Nanoseconds on the clock every decider of one replica shares (a monotonic epoch).
pub type Nanos = u64;

const MILLI: Nanos = 1_000_000;
/// The most tokens one grant carries.
pub const LEASE_MAX_TOKENS: u32 = 1024;
/// How long a grant from a local owner may be spent.
pub const LOCAL_LEASE_TTL: Nanos = 5_000 * MILLI;
/// How long a grant from Redis may be spent.
pub const REDIS_LEASE_TTL: Nanos = 2_000 * MILLI;
/// A Redis grant unused this long is settled (other replicas may need its tokens; there
/// is no recall across replicas).
pub const REDIS_LEASE_IDLE: Nanos = 1_000 * MILLI;
/// A grant this close to its expiry is settled by the sweep (an exact count beats the
/// owner's worst-case conversion).
pub const SETTLE_BEFORE_EXPIRY: Nanos = 500 * MILLI;
/// The longest an owner holds a request while the holders it recalled settle.
pub const RECALL_WAIT: Nanos = 40 * MILLI;
/// Grants one ledger keeps out at once; past it, asks are answered without a grant.
pub const MAX_GRANTS_PER_KEY: usize = 64;
/// Requests of one key that wait on one holder for its ask to be answered.
pub const MAX_WAITING_PER_KEY: usize = 256;
/// Requests one owner holds while it recalls.
pub const MAX_PARKED: usize = 4096;
/// A holder's first lease for a key: a few tokens, so a steady client is not a message per request.
const FIRST_WANT: u32 = 4;

/// Tokens leased to one holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub id: u64,
    pub tokens: u32,
    /// After this the holder spends none of it and the owner counts it as spent.
    pub expires_at: Nanos,
}

/// What a holder learns of the owner's ledger with an answer: enough to tell a client what
/// remains, and to refuse on its own (no message) until the owner could admit again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerView {
    pub tat: Nanos,
    /// Tokens on lease, this holder's new grant included.
    pub outstanding: u64,
    /// When the owner could next admit a request, as far as it knows.
    pub retry_at: Nanos,
}

impl OwnerView {
    fn debt(&self, quota: Quota, now: Nanos) -> u64 {
        self.tat.saturating_sub(now).saturating_add(self.outstanding.saturating_mul(quota.interval_ns))
    }

    /// What the owner itself could still hand out now (a lower bound: it only refills).
    pub fn available(&self, quota: Quota, now: Nanos) -> u64 {
        quota.capacity_ns().saturating_sub(self.debt(quota, now)) / quota.interval_ns
    }
}

/// A holder giving a grant back: how many of its tokens it spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub grant: u64,
    pub spent: u32,
}

/// A holder asking the owner to decide one request and lease it more tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAsk {
    pub key: BucketKey,
    pub from: usize,
    /// The grant the holder gives back with this ask.
    pub settle: Option<Settlement>,
    /// Tokens it would like beyond this request.
    pub want: u32,
}

/// The owner's answer: its decision on the asking request, maybe a grant, and its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub allowed: bool,
    pub grant: Option<Grant>,
    pub view: OwnerView,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    grant: Grant,
    holder: usize,
    recalled: bool,
}

/// One bucket at its owner. Plain data on a clock passed in.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    tat: Nanos,
    grants: Vec<Outstanding>,
    issued: u64,
}

impl Ledger {
    fn outstanding(&self) -> u64 {
        self.grants.iter().map(|out| u64::from(out.grant.tokens)).sum()
    }

    fn debt(&self, quota: Quota, now: Nanos) -> u64 {
        self.tat.saturating_sub(now).saturating_add(self.outstanding().saturating_mul(quota.interval_ns))
    }

    pub fn available(&self, quota: Quota, now: Nanos) -> u64 {
        quota.capacity_ns().saturating_sub(self.debt(quota, now)) / quota.interval_ns
    }

    /// Counts every grant whose lease ended as fully spent at its expiry, in expiry order.
    /// Returns how many ended unsettled.
    pub fn expire(&mut self, quota: Quota, now: Nanos) -> u64 {
        if !self.grants.iter().any(|out| out.grant.expires_at <= now) {
            return 0;
        }
        self.grants.sort_by_key(|out| out.grant.expires_at);
        let ended = self.grants.iter().take_while(|out| out.grant.expires_at <= now).count();
        for out in self.grants.drain(..ended) {
            let spent = u64::from(out.grant.tokens).saturating_mul(quota.interval_ns);
            self.tat = self.tat.max(out.grant.expires_at).saturating_add(spent);
        }
        ended as u64
    }

    /// Spends one token for a request decided here.
    pub fn admit(&mut self, quota: Quota, now: Nanos) -> bool {
        if self.available(quota, now) == 0 {
            return false;
        }
        self.tat = self.tat.max(now).saturating_add(quota.interval_ns);
        true
    }

    /// Leases up to `want` tokens (never more than half of what is available) to `holder`.
    pub fn grant(&mut self, quota: Quota, now: Nanos, holder: usize, want: u32, ttl: Nanos) -> Option<Grant> {
        if self.grants.len() >= MAX_GRANTS_PER_KEY {
            return None;
        }
        let half = self.available(quota, now) / 2;
        let tokens = u32::try_from(half.min(u64::from(want.min(LEASE_MAX_TOKENS)))).ok().filter(|n| *n > 0)?;
        self.issued += 1;
        let grant = Grant { id: self.issued, tokens, expires_at: now.saturating_add(ttl) };
        self.grants.push(Outstanding { grant, holder, recalled: false });
        Some(grant)
    }

    /// Takes a grant back. False when it is not (or no longer) out, e.g. already expired.
    pub fn settle(&mut self, quota: Quota, now: Nanos, holder: usize, settlement: Settlement) -> bool {
        let Some(at) = self.grants.iter().position(|out| out.grant.id == settlement.grant && out.holder == holder)
        else {
            return false;
        };
        let grant = self.grants.swap_remove(at).grant;
        let spent = settlement.spent.min(grant.tokens);
        self.tat = self.tat.max(now).saturating_add(u64::from(spent).saturating_mul(quota.interval_ns));
        true
    }

    /// One call of a holder that owns nothing (Redis): expire, settle, decide, lease. The
    /// Lua script in `actors::rate_limiter::redis` is this function, step for step.
    #[allow(clippy::too_many_arguments)]
    pub fn serve(
        &mut self,
        quota: Quota,
        now: Nanos,
        holder: usize,
        settle: Option<Settlement>,
        decide: bool,
        want: u32,
        ttl: Nanos,
    ) -> LeaseAnswer {
        self.expire(quota, now);
        if let Some(settlement) = settle {
            self.settle(quota, now, holder, settlement);
        }
        let allowed = decide && self.admit(quota, now);
        let grant = if allowed || !decide { self.grant(quota, now, holder, want, ttl) } else { None };
        LeaseAnswer { allowed, grant, view: self.view(quota, now) }
    }

    pub fn view(&self, quota: Quota, now: Nanos) -> OwnerView {
        OwnerView {
            tat: self.tat,
            outstanding: self.outstanding(),
            retry_at: now.saturating_add(self.wait(quota, now)),
        }
    }

    /// How long until one request could pass with no settlement (an upper bound: the
    /// sooner of the tat's decay, if what is on lease leaves room for one, and every grant
    /// having expired and been counted as spent).
    fn wait(&self, quota: Quota, now: Nanos) -> Nanos {
        let (interval, capacity) = (quota.interval_ns, quota.capacity_ns());
        let leased = self.outstanding().saturating_mul(interval);
        if self.debt(quota, now).saturating_add(interval) <= capacity {
            return 0;
        }
        let room = capacity.checked_sub(leased.saturating_add(interval));
        let by_decay = room.map(|room| self.tat.saturating_sub(now).saturating_sub(room));
        let last_expiry = self.grants.iter().map(|out| out.grant.expires_at).max().unwrap_or(now);
        let converted = self.tat.max(last_expiry).saturating_add(leased).saturating_add(interval);
        let by_expiry = converted.saturating_sub(capacity).saturating_sub(now);
        by_decay.map_or(by_expiry, |by_decay| by_decay.min(by_expiry))
    }

    pub fn decision(&self, quota: Quota, now: Nanos, allowed: bool) -> Decision {
        Decision {
            allowed,
            tat_ns: self.tat,
            remaining: if allowed { saturate(self.available(quota, now)) } else { 0 },
            reset_after: Duration::from_nanos(self.debt(quota, now)),
            retry_after: if allowed { Duration::ZERO } else { Duration::from_nanos(self.wait(quota, now).max(1)) },
        }
    }

    /// Marks the grants not yet recalled as recalled; returns them as (holder, grant id).
    fn recall(&mut self) -> Vec<(usize, u64)> {
        self.grants
            .iter_mut()
            .filter(|out| !out.recalled)
            .map(|out| {
                out.recalled = true;
                (out.holder, out.grant.id)
            })
            .collect()
    }

    fn awaiting_recall(&self) -> bool {
        self.grants.iter().any(|out| out.recalled)
    }

    /// Full, nothing on lease: forgetting it changes nothing.
    fn is_idle(&self, now: Nanos) -> bool {
        self.tat <= now && self.grants.is_empty()
    }
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A holder's grant from one owner, and what it last learnt of that owner.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    grant: Option<Grant>,
    left: u32,
    spent: u32,
    view: OwnerView,
    last_used: Nanos,
}

impl Lease {
    fn from_answer(answer: &LeaseAnswer, now: Nanos) -> Self {
        Self {
            grant: answer.grant,
            left: answer.grant.map_or(0, |g| g.tokens),
            spent: 0,
            view: answer.view,
            last_used: now,
        }
    }

    fn spendable(&self, now: Nanos) -> bool {
        self.left > 0 && self.grant.is_some_and(|grant| now < grant.expires_at)
    }

    /// Gives the grant back (it is spent no more). `None` when there is none, or it expired,
    /// which the owner settles on its own.
    fn settle(&mut self, now: Nanos) -> Option<Settlement> {
        let grant = self.grant.take().filter(|grant| now < grant.expires_at)?;
        let settlement = Settlement { grant: grant.id, spent: self.spent };
        self.left = 0;
        self.view.outstanding = self.view.outstanding.saturating_sub(u64::from(grant.tokens));
        Some(settlement)
    }

    /// The owner's view plus what this holder can still spend: what the client may count on.
    fn decision(&self, quota: Quota, now: Nanos, allowed: bool) -> Decision {
        let mine = u64::from(self.left);
        let debt = self.view.debt(quota, now).saturating_sub(mine.saturating_mul(quota.interval_ns));
        let wait = self.view.retry_at.saturating_sub(now).max(1);
        Decision {
            allowed,
            tat_ns: self.view.tat,
            remaining: if allowed { saturate(self.view.available(quota, now).saturating_add(mine)) } else { 0 },
            reset_after: Duration::from_nanos(debt),
            retry_after: if allowed { Duration::ZERO } else { Duration::from_nanos(wait) },
        }
    }
}

/// Which ledger a decision draws on: this replica's owners, or the one in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Local,
    Redis,
}

/// What the shard must do for the state machine: send, answer, wake up later.
#[derive(Debug)]
pub enum Effect<R> {
    /// A request that waited is decided (`None`: no decision could be had).
    Decide(R, Option<Decision>),
    /// A holder's ask that the owner held is answered.
    Answer(R, LeaseAnswer),
    /// Ask the owner shard `owner`.
    Ask { owner: usize, ask: LeaseAsk },
    /// Ask Redis (this shard is `ask.from`).
    AskRedis { ask: LeaseAsk },
    /// Give a grant back to a local owner.
    Settle { owner: usize, key: BucketKey, settlement: Settlement },
    /// Give a grant back to Redis.
    SettleRedis { key: BucketKey, settlement: Settlement },
    /// Ask a holder for grants back.
    Recall { holder: usize, key: BucketKey, grants: Vec<u64> },
    /// Call `wake` at this time (held requests time out).
    WakeAt(Nanos),
}

/// Counters of lease traffic, per shard, since start-up (the actors API sums them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Asks this shard sent to local owners.
    pub asks: u64,
    /// Calls this shard made to Redis (asks and settlements).
    pub redis_calls: u64,
    /// Grants this shard made as an owner, and the tokens in them.
    pub grants: u64,
    pub tokens_granted: u64,
    /// Grants given back to this shard as an owner.
    pub settlements: u64,
    /// Recalls this shard sent as an owner.
    pub recalls: u64,
    /// Grants that expired unsettled here (counted as spent).
    pub expired: u64,
    /// Requests this shard refused as a holder, from the owner's last view, without a message.
    pub refused_locally: u64,
}

struct Parked<R> {
    responder: R,
    /// An ask from a holder (answered with a `LeaseAnswer`) rather than a request here.
    ask: bool,
    deadline: Nanos,
}

struct Owned<R> {
    ledger: Ledger,
    parked: VecDeque<Parked<R>>,
}

impl<R> Default for Owned<R> {
    fn default() -> Self {
        Self { ledger: Ledger::default(), parked: VecDeque::new() }
    }
}

struct Held<R> {
    local: Option<Lease>,
    redis: Option<Lease>,
    /// Tokens to ask for next: doubles while leases are used up, halves when one comes back
    /// unused, and covers the requests already waiting.
    want: u32,
    /// Requests that waited for the last answer and still need a token.
    backlog: usize,
    asking: Option<Backend>,
    waiting: VecDeque<R>,
    /// Grants an owner recalled before they arrived (a recall can overtake the answer that
    /// carries its grant): given back the moment they do.
    recalled: Vec<u64>,
}

impl<R> Default for Held<R> {
    fn default() -> Self {
        Self {
            local: None,
            redis: None,
            want: FIRST_WANT,
            backlog: 0,
            asking: None,
            waiting: VecDeque::new(),
            recalled: Vec::new(),
        }
    }
}

impl<R> Held<R> {
    fn lease(&mut self, backend: Backend) -> &mut Option<Lease> {
        match backend {
            Backend::Local => &mut self.local,
            Backend::Redis => &mut self.redis,
        }
    }

    fn is_stale(&self, now: Nanos) -> bool {
        let stale =
            |lease: &Option<Lease>| lease.is_none_or(|lease| lease.grant.is_none() && lease.view.retry_at <= now);
        self.asking.is_none()
            && self.waiting.is_empty()
            && stale(&self.local)
            && stale(&self.redis)
            && self.recalled.is_empty()
    }
}

enum Route {
    Now(Decision),
    /// Held at this owner until a recall settles (or `RECALL_WAIT`).
    Park,
    /// Waiting for this holder's ask to be answered.
    Wait,
}

/// The limiter of one shard (an HTTP worker): owner of the keys that hash to its slot,
/// holder of leases for the others, and (with Redis) holder of Redis leases for all.
/// `R` is how a waiting request is answered later.
pub struct ShardCore<R> {
    /// This shard's slot: the keys hashing to it are owned here. `None` (a worker started
    /// after the registry filled) owns nothing.
    slot: Option<usize>,
    workers: usize,
    quotas: Quotas,
    owned: LruCache<BucketKey, Owned<R>>,
    held: LruCache<BucketKey, Held<R>>,
    parked_keys: Vec<BucketKey>,
    /// The key being worked on: after a panic its state is suspect and dropped.
    suspect: Option<BucketKey>,
    pub stats: LeaseStats,
}

/// The slot that owns a key (the same in every shard of the process).
pub fn owner_of(key: &BucketKey, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % workers.max(1) as u64).unwrap_or(0)
}

impl<R> ShardCore<R> {
    pub fn new(slot: Option<usize>, workers: usize, quotas: Quotas, max_keys: NonZeroUsize) -> Self {
        Self {
            slot,
            workers: workers.max(1),
            quotas,
            owned: LruCache::new(max_keys),
            held: LruCache::new(max_keys),
            parked_keys: Vec::new(),
            suspect: None,
            stats: LeaseStats::default(),
        }
    }

    /// Buckets owned here.
    pub fn owned_len(&self) -> usize {
        self.owned.len()
    }

    /// Keys this shard holds leases (or waits) for.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn cap(&self) -> NonZeroUsize {
        self.owned.cap()
    }

    pub fn parked_len(&self) -> usize {
        self.parked_keys.iter().filter_map(|key| self.owned.peek(key)).map(|owned| owned.parked.len()).sum()
    }

    fn holder_id(&self) -> usize {
        self.slot.unwrap_or(self.workers)
    }

    fn quota(&self, key: &BucketKey, backend: Backend) -> Quota {
        let quota = self.quotas.of(key.0);
        match backend {
            Backend::Local => quota,
            Backend::Redis => quota.in_whole_micros(),
        }
    }

    fn owns(&self, key: &BucketKey) -> bool {
        self.slot == Some(owner_of(key, self.workers))
    }

    /// Decides a request: `Some` at once (the common case: this shard owns the key, or
    /// holds tokens for it), or `None` when the answer comes later as `Effect::Decide`
    /// with the responder made here.
    pub fn check(
        &mut self,
        key: BucketKey,
        now: Nanos,
        backend: Backend,
        responder: impl FnOnce() -> R,
        fx: &mut Vec<Effect<R>>,
    ) -> Option<Decision> {
        self.suspect = Some(key);
        let decision = match self.route(key, now, backend, fx) {
            Route::Now(decision) => Some(decision),
            Route::Park => {
                self.park(key, now, responder(), false, fx);
                None
            }
            Route::Wait => {
                if let Some(held) = self.held.get_mut(&key) {
                    held.waiting.push_back(responder());
                }
                None
            }
        };
        self.suspect = None;
        decision
    }

    fn route(&mut self, key: BucketKey, now: Nanos, backend: Backend, fx: &mut Vec<Effect<R>>) -> Route {
        if backend == Backend::Local && self.owns(&key) {
            self.route_owned(key, now, fx)
        } else {
            self.route_held(key, now, backend, fx)
        }
    }

    fn route_owned(&mut self, key: BucketKey, now: Nanos, fx: &mut Vec<Effect<R>>) -> Route {
        let quota = self.quota(&key, Backend::Local);
        let owned = self.owned.get_or_insert_mut(key, Owned::default);
        self.stats.expired += owned.ledger.expire(quota, now);
        if !owned.parked.is_empty() {
            // Those already waiting go first.
            self.release(key, now, fx);
        }
        let owned = self.owned.get_or_insert_mut(key, Owned::default);
        if owned.parked.is_empty() && owned.ledger.admit(quota, now) {
            return Route::Now(owned.ledger.decision(quota, now, true));
        }
        if self.recall(key, fx) {
            Route::Park
        } else {
            let owned = self.owned.get_or_insert_mut(key, Owned::default);
            Route::Now(owned.ledger.decision(quota, now, false))
        }
    }

    /// Recalls what is out for `key`; true when a request should wait for it.
    fn recall(&mut self, key: BucketKey, fx: &mut Vec<Effect<R>>) -> bool {
        let Some(owned) = self.owned.peek_mut(&key) else { return false };
        let mut recalled = owned.ledger.recall();
        recalled.sort_unstable();
        let waiting = owned.ledger.awaiting_recall();
        for holder_grants in recalled.chunk_by(|a, b| a.0 == b.0) {
            let holder = holder_grants[0].0;
            fx.push(Effect::Recall { holder, key, grants: holder_grants.iter().map(|(_, grant)| *grant).collect() });
            self.stats.recalls += 1;
        }
        waiting && self.parked_len() < MAX_PARKED
    }

    fn park(&mut self, key: BucketKey, now: Nanos, responder: R, ask: bool, fx: &mut Vec<Effect<R>>) {
        let deadline = now.saturating_add(RECALL_WAIT);
        if let Some(owned) = self.owned.peek_mut(&key) {
            owned.parked.push_back(Parked { responder, ask, deadline });
            if !self.parked_keys.contains(&key) {
                self.parked_keys.push(key);
            }
            fx.push(Effect::WakeAt(deadline));
        }
    }

    fn route_held(&mut self, key: BucketKey, now: Nanos, backend: Backend, fx: &mut Vec<Effect<R>>) -> Route {
        let quota = self.quota(&key, backend);
        let (from, owner) = (self.holder_id(), owner_of(&key, self.workers));
        let held = self.held.get_or_insert_mut(key, Held::default);
        let (asking, waiting) = (held.asking, held.waiting.len());
        let slot = match backend {
            Backend::Local => &mut held.local,
            Backend::Redis => &mut held.redis,
        };
        if let Some(lease) = slot.as_mut().filter(|lease| lease.spendable(now)) {
            lease.left -= 1;
            lease.spent += 1;
            lease.last_used = now;
            return Route::Now(lease.decision(quota, now, true));
        }
        if asking == Some(backend) {
            if waiting < MAX_WAITING_PER_KEY {
                return Route::Wait;
            }
            // A flood on one key: refuse until the answer comes (it will say what is left).
            let refusal = slot.as_ref().map(|lease| lease.decision(quota, now, false));
            return Route::Now(refusal.unwrap_or_else(busy));
        }
        if let Some(lease) = slot.as_ref().filter(|lease| now < lease.view.retry_at) {
            self.stats.refused_locally += 1;
            return Route::Now(lease.decision(quota, now, false));
        }
        let previous = slot.take();
        let settle = previous.and_then(|mut lease| lease.settle(now));
        held.want = match previous {
            Some(lease) if lease.grant.is_some() && lease.left == 0 => {
                held.want.saturating_mul(2).min(LEASE_MAX_TOKENS)
            }
            Some(lease) if lease.grant.is_some() => (held.want / 2).max(1),
            _ => held.want,
        };
        held.asking = Some(backend);
        let backlog = u32::try_from(std::mem::take(&mut held.backlog)).unwrap_or(u32::MAX);
        let ask = LeaseAsk { key, from, settle, want: held.want.max(backlog.saturating_add(1)) };
        match backend {
            Backend::Local => {
                self.stats.asks += 1;
                fx.push(Effect::Ask { owner, ask });
            }
            Backend::Redis => {
                self.stats.redis_calls += 1;
                fx.push(Effect::AskRedis { ask });
            }
        }
        Route::Wait
    }

    /// An owner handles a holder's ask: `Some` at once, or `None` when the ask is held
    /// during a recall (answered later as `Effect::Answer` with the responder made here).
    pub fn on_ask(
        &mut self,
        ask: LeaseAsk,
        now: Nanos,
        responder: impl FnOnce() -> R,
        fx: &mut Vec<Effect<R>>,
    ) -> Option<LeaseAnswer> {
        let key = ask.key;
        self.suspect = Some(key);
        let quota = self.quota(&key, Backend::Local);
        let owned = self.owned.get_or_insert_mut(key, Owned::default);
        self.stats.expired += owned.ledger.expire(quota, now);
        if let Some(settlement) = ask.settle {
            self.stats.settlements += u64::from(owned.ledger.settle(quota, now, ask.from, settlement));
            self.release(key, now, fx);
        }
        let owned = self.owned.get_or_insert_mut(key, Owned::default);
        let answer = if owned.parked.is_empty() && owned.ledger.admit(quota, now) {
            let grant = owned.ledger.grant(quota, now, ask.from, ask.want, LOCAL_LEASE_TTL);
            if let Some(grant) = grant {
                self.stats.grants += 1;
                self.stats.tokens_granted += u64::from(grant.tokens);
            }
            Some(LeaseAnswer { allowed: true, grant, view: owned.ledger.view(quota, now) })
        } else if self.recall(key, fx) {
            self.park(key, now, responder(), true, fx);
            None
        } else {
            let owned = self.owned.get_or_insert_mut(key, Owned::default);
            Some(LeaseAnswer { allowed: false, grant: None, view: owned.ledger.view(quota, now) })
        };
        self.suspect = None;
        answer
    }

    /// An owner takes a grant back, and serves what was held for it.
    pub fn on_settle(
        &mut self,
        from: usize,
        key: BucketKey,
        settlement: Settlement,
        now: Nanos,
        fx: &mut Vec<Effect<R>>,
    ) {
        let quota = self.quota(&key, Backend::Local);
        if let Some(owned) = self.owned.peek_mut(&key) {
            self.stats.expired += owned.ledger.expire(quota, now);
            self.stats.settlements += u64::from(owned.ledger.settle(quota, now, from, settlement));
        }
        self.release(key, now, fx);
    }

    /// Serves held requests in order while tokens last; refuses the rest once nothing
    /// recalled is still out.
    fn release(&mut self, key: BucketKey, now: Nanos, fx: &mut Vec<Effect<R>>) {
        let quota = self.quota(&key, Backend::Local);
        let Some(owned) = self.owned.peek_mut(&key) else { return };
        while let Some(front) = owned.parked.front() {
            let allowed = owned.ledger.admit(quota, now);
            if !allowed && owned.ledger.awaiting_recall() && front.deadline > now {
                break;
            }
            if let Some(parked) = owned.parked.pop_front() {
                fx.push(answer_parked(&owned.ledger, quota, now, parked, allowed));
            }
        }
        if owned.parked.is_empty() {
            self.parked_keys.retain(|parked| *parked != key);
        }
    }

    /// Held requests whose wait is over are refused (or admitted, if tokens came back).
    pub fn wake(&mut self, now: Nanos, fx: &mut Vec<Effect<R>>) {
        for key in self.parked_keys.clone() {
            self.release(key, now, fx);
        }
    }

    /// A holder gets the owner's answer to its ask (`Err`: none came; with `fall_back`
    /// the waiting requests are decided again on the local ledgers).
    pub fn on_answer(
        &mut self,
        key: BucketKey,
        backend: Backend,
        answer: Result<LeaseAnswer, NoAnswer>,
        now: Nanos,
        fx: &mut Vec<Effect<R>>,
    ) {
        self.suspect = Some(key);
        let quota = self.quota(&key, backend);
        let Some(held) = self.held.get_mut(&key).filter(|held| held.asking == Some(backend)) else {
            // Nobody waits for it any more (forgotten after a restart): give the grant back.
            if let Ok(LeaseAnswer { grant: Some(grant), .. }) = answer {
                let settlement = Settlement { grant: grant.id, spent: 0 };
                fx.push(settle_effect(backend, owner_of(&key, self.workers), key, settlement));
            }
            self.suspect = None;
            return;
        };
        held.asking = None;
        let mut waiting = std::mem::take(&mut held.waiting);
        match answer {
            Ok(answer) => {
                let mut lease = Lease::from_answer(&answer, now);
                if let Some(first) = waiting.pop_front() {
                    fx.push(Effect::Decide(first, Some(lease.decision(quota, now, answer.allowed))));
                }
                // If these outnumber the grant, the next ask asks for all of them at once.
                held.backlog = waiting.len();
                let recalled = lease.grant.and_then(|grant| held.recalled.iter().position(|id| *id == grant.id));
                if let Some(at) = recalled {
                    held.recalled.swap_remove(at);
                    if let Some(settlement) = lease.settle(now) {
                        fx.push(settle_effect(backend, owner_of(&key, self.workers), key, settlement));
                    }
                }
                *held.lease(backend) = Some(lease);
                for responder in waiting {
                    self.recheck(key, now, backend, responder, fx);
                }
                if let Some(held) = self.held.peek_mut(&key) {
                    held.backlog = 0;
                }
            }
            Err(NoAnswer { fall_back: true }) => {
                for responder in waiting {
                    self.recheck(key, now, Backend::Local, responder, fx);
                }
            }
            Err(NoAnswer { fall_back: false }) => {
                fx.extend(waiting.into_iter().map(|responder| Effect::Decide(responder, None)));
            }
        }
        self.suspect = None;
    }

    fn recheck(&mut self, key: BucketKey, now: Nanos, backend: Backend, responder: R, fx: &mut Vec<Effect<R>>) {
        match self.route(key, now, backend, fx) {
            Route::Now(decision) => fx.push(Effect::Decide(responder, Some(decision))),
            Route::Park => self.park(key, now, responder, false, fx),
            Route::Wait => {
                if let Some(held) = self.held.get_mut(&key) {
                    held.waiting.push_back(responder);
                }
            }
        }
    }

    /// A holder gives back what an owner recalls. A grant it does not hold yet (its answer
    /// is still on the way) is given back when it arrives; one it gave back already, or
    /// lost, stays with the owner until it expires.
    pub fn on_recall(&mut self, owner: usize, key: BucketKey, grants: &[u64], now: Nanos, fx: &mut Vec<Effect<R>>) {
        let held = self.held.get_or_insert_mut(key, Held::default);
        held.want = (held.want / 2).max(1);
        let holding = held.local.as_ref().and_then(|lease| lease.grant).map(|grant| grant.id);
        for grant in grants {
            if Some(*grant) == holding {
                if let Some(settlement) = held.local.as_mut().and_then(|lease| lease.settle(now)) {
                    fx.push(Effect::Settle { owner, key, settlement });
                }
            } else if held.recalled.len() < MAX_GRANTS_PER_KEY && !held.recalled.contains(grant) {
                held.recalled.push(*grant);
            }
        }
    }

    /// Owner housekeeping: grants that ended count as spent; full ledgers with nothing on
    /// lease are forgotten (they would decide nothing differently).
    pub fn sweep_ledgers(&mut self, now: Nanos) {
        let quotas = self.quotas;
        for (key, owned) in self.owned.iter_mut() {
            self.stats.expired += owned.ledger.expire(quotas.of(key.0), now);
        }
        let idle: Vec<BucketKey> = self
            .owned
            .iter()
            .filter(|(_, owned)| owned.parked.is_empty() && owned.ledger.is_idle(now))
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            self.owned.pop(&key);
        }
    }

    /// Holder housekeeping: grants about to expire, and Redis grants left unused, are
    /// settled; leases with nothing left to tell are forgotten.
    pub fn sweep_leases(&mut self, now: Nanos, fx: &mut Vec<Effect<R>>) {
        let workers = self.workers;
        for (key, held) in self.held.iter_mut() {
            for backend in [Backend::Local, Backend::Redis] {
                let Some(lease) = held.lease(backend).as_mut() else { continue };
                let Some(grant) = lease.grant else { continue };
                let ending = grant.expires_at <= now.saturating_add(SETTLE_BEFORE_EXPIRY);
                let unused = backend == Backend::Redis && lease.last_used.saturating_add(REDIS_LEASE_IDLE) <= now;
                if !(ending || unused) {
                    continue;
                }
                if let Some(settlement) = lease.settle(now) {
                    fx.push(settle_effect(backend, owner_of(key, workers), *key, settlement));
                    if backend == Backend::Redis {
                        self.stats.redis_calls += 1;
                    }
                }
            }
        }
        for (_, held) in self.held.iter_mut() {
            if held.asking.is_none() {
                // A recalled grant can only still arrive with an answer in flight.
                held.recalled.clear();
            }
        }
        let stale: Vec<BucketKey> =
            self.held.iter().filter(|(_, held)| held.is_stale(now)).map(|(key, _)| *key).collect();
        for key in stale {
            self.held.pop(&key);
        }
    }

    /// After a panic: every ledger is sound whichever side of an update it stopped on
    /// (each field only grows or is replaced whole), except the one being worked on, which
    /// is dropped (that one client starts afresh). Requests and asks that waited on this
    /// shard are answered with no decision; held requests get a new deadline.
    pub fn recover(&mut self, now: Nanos, fx: &mut Vec<Effect<R>>) {
        if let Some(key) = self.suspect.take() {
            if let Some(owned) = self.owned.pop(&key) {
                for parked in owned.parked {
                    if !parked.ask {
                        fx.push(Effect::Decide(parked.responder, None));
                    }
                }
            }
            self.parked_keys.retain(|parked| *parked != key);
            if let Some(held) = self.held.pop(&key) {
                fx.extend(held.waiting.into_iter().map(|responder| Effect::Decide(responder, None)));
            }
        }
        for (_, held) in self.held.iter_mut() {
            if held.asking.take().is_some() {
                fx.extend(held.waiting.drain(..).map(|responder| Effect::Decide(responder, None)));
            }
        }
        if !self.parked_keys.is_empty() {
            fx.push(Effect::WakeAt(now.saturating_add(RECALL_WAIT)));
        }
    }
}

/// The ask could not be answered (a timeout, a closed mailbox, Redis down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAnswer {
    /// Decide the waiting requests again on the local ledgers (Redis failed: fall back).
    pub fall_back: bool,
}

fn settle_effect<R>(backend: Backend, owner: usize, key: BucketKey, settlement: Settlement) -> Effect<R> {
    match backend {
        Backend::Local => Effect::Settle { owner, key, settlement },
        Backend::Redis => Effect::SettleRedis { key, settlement },
    }
}

fn answer_parked<R>(ledger: &Ledger, quota: Quota, now: Nanos, parked: Parked<R>, allowed: bool) -> Effect<R> {
    if parked.ask {
        Effect::Answer(parked.responder, LeaseAnswer { allowed, grant: None, view: ledger.view(quota, now) })
    } else {
        Effect::Decide(parked.responder, Some(ledger.decision(quota, now, allowed)))
    }
}

/// A refusal for a key flooded beyond `MAX_WAITING_PER_KEY` before any answer came.
fn busy() -> Decision {
    Decision {
        allowed: false,
        tat_ns: 0,
        remaining: 0,
        reset_after: Duration::from_secs(1),
        retry_after: Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::rate_limit::{ClientKey, Policy};

    const SECOND: Nanos = 1_000_000_000;

    fn key() -> BucketKey {
        (Policy::Default, ClientKey::Ip(IpAddr::from([192, 0, 2, 1])))
    }

    fn quotas(rate: u32, burst: u32) -> Quotas {
        Quotas { default: Quota::per_second(rate, burst), auth: Quota::per_minute(3) }
    }

    /// How a waiting request or ask is answered in the simulation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum To {
        Request,
        Holder(usize),
    }

    #[derive(Debug, Clone)]
    enum Msg {
        Ask {
            to: usize,
            from_shard: usize,
            ask: LeaseAsk,
        },
        /// `decided_at`: when the owner decided the asking request (what the bound is about).
        Reply {
            to: usize,
            backend: Backend,
            answer: LeaseAnswer,
            decided_at: Nanos,
        },
        Settle {
            to: usize,
            from: usize,
            settlement: Settlement,
        },
        Recall {
            to: usize,
            owner: usize,
            grants: Vec<u64>,
        },
        AskRedis {
            from_shard: usize,
            ask: LeaseAsk,
        },
        SettleRedis {
            from_shard: usize,
            settlement: Settlement,
        },
    }

    /// Replicas of `workers` shards each, a network that delivers, delays, reorders or
    /// loses whatever the test says, one client key, and a clock moved by hand.
    struct World {
        quota: Quota,
        workers: usize,
        backend: Backend,
        shards: Vec<ShardCore<To>>,
        redis: Ledger,
        network: Vec<Msg>,
        now: Nanos,
        admitted: Vec<Nanos>,
        refused: usize,
        /// Every decision a client was told, in order.
        told: Vec<Decision>,
    }

    impl World {
        fn new(replicas: usize, workers: usize, quotas: Quotas, backend: Backend) -> Self {
            let max_keys = NonZeroUsize::new(16).unwrap();
            let shards =
                (0..replicas * workers).map(|i| ShardCore::new(Some(i % workers), workers, quotas, max_keys)).collect();
            let quota = match backend {
                Backend::Local => quotas.default,
                Backend::Redis => quotas.default.in_whole_micros(),
            };
            Self {
                quota,
                workers,
                backend,
                shards,
                redis: Ledger::default(),
                network: Vec::new(),
                now: 0,
                admitted: Vec::new(),
                refused: 0,
                told: Vec::new(),
            }
        }

        fn replica_base(&self, shard: usize) -> usize {
            shard - shard % self.workers
        }

        fn apply(&mut self, shard: usize, fx: Vec<Effect<To>>) {
            let base = self.replica_base(shard);
            for effect in fx {
                match effect {
                    Effect::Decide(To::Request, decision) => self.count(decision),
                    Effect::Decide(To::Holder(_), _) => unreachable!("asks are answered with Answer"),
                    Effect::Answer(To::Holder(to), answer) => {
                        self.network.push(Msg::Reply { to, backend: Backend::Local, answer, decided_at: self.now })
                    }
                    Effect::Answer(To::Request, _) => unreachable!("requests are answered with Decide"),
                    Effect::Ask { owner, ask } => {
                        self.network.push(Msg::Ask { to: base + owner, from_shard: shard, ask })
                    }
                    Effect::AskRedis { ask } => self.network.push(Msg::AskRedis { from_shard: shard, ask }),
                    Effect::Settle { owner, settlement, .. } => {
                        self.network.push(Msg::Settle { to: base + owner, from: shard - base, settlement })
                    }
                    Effect::SettleRedis { settlement, .. } => {
                        self.network.push(Msg::SettleRedis { from_shard: shard, settlement })
                    }
                    Effect::Recall { holder, grants, .. } => {
                        self.network.push(Msg::Recall { to: base + holder, owner: shard - base, grants })
                    }
                    Effect::WakeAt(_) => {}
                }
            }
        }

        fn count(&mut self, decision: Option<Decision>) {
            self.told.extend(decision);
            match decision {
                Some(decision) if decision.allowed => self.admitted.push(self.now),
                Some(_) => self.refused += 1,
                None => {}
            }
        }

        fn request(&mut self, shard: usize) {
            let mut fx = Vec::new();
            let decision = self.shards[shard].check(key(), self.now, self.backend, || To::Request, &mut fx);
            self.count(decision);
            self.apply(shard, fx);
        }

        fn deliver(&mut self, pick: usize) {
            if self.network.is_empty() {
                return;
            }
            let message = self.network.remove(pick % self.network.len());
            let (quota, now, mut fx) = (self.quota, self.now, Vec::new());
            let shard = match message {
                Msg::Ask { to, from_shard, ask } => {
                    if let Some(answer) = self.shards[to].on_ask(ask, now, || To::Holder(from_shard), &mut fx) {
                        self.network.push(Msg::Reply {
                            to: from_shard,
                            backend: Backend::Local,
                            answer,
                            decided_at: now,
                        });
                    }
                    to
                }
                Msg::Reply { to, backend, answer, decided_at } => {
                    self.shards[to].on_answer(key(), backend, Ok(answer), now, &mut fx);
                    // The first request decided is the asker, admitted back when the owner said so.
                    if let Some(Effect::Decide(To::Request, Some(decision))) = fx.first() {
                        if answer.allowed && decision.allowed {
                            self.admitted.push(decided_at);
                            self.told.push(*decision);
                            fx.remove(0);
                        }
                    }
                    to
                }
                Msg::Settle { to, from, settlement } => {
                    self.shards[to].on_settle(from, key(), settlement, now, &mut fx);
                    to
                }
                Msg::Recall { to, owner, grants } => {
                    self.shards[to].on_recall(owner, key(), &grants, now, &mut fx);
                    to
                }
                Msg::AskRedis { from_shard, ask } => {
                    let answer = self.redis.serve(quota, now, from_shard, ask.settle, true, ask.want, REDIS_LEASE_TTL);
                    self.network.push(Msg::Reply { to: from_shard, backend: Backend::Redis, answer, decided_at: now });
                    from_shard
                }
                Msg::SettleRedis { from_shard, settlement } => {
                    self.redis.serve(quota, now, from_shard, Some(settlement), false, 0, REDIS_LEASE_TTL);
                    from_shard
                }
            };
            self.apply(shard, fx);
        }

        /// A message lost in transit; an ask (or its answer) times out at the asker.
        fn lose(&mut self, pick: usize) {
            if self.network.is_empty() {
                return;
            }
            let message = self.network.remove(pick % self.network.len());
            let (asker, backend) = match message {
                Msg::Ask { from_shard, .. } => (from_shard, Backend::Local),
                Msg::AskRedis { from_shard, .. } => (from_shard, Backend::Redis),
                Msg::Reply { to, backend, .. } => (to, backend),
                _ => return,
            };
            let mut fx = Vec::new();
            self.shards[asker].on_answer(key(), backend, Err(NoAnswer { fall_back: false }), self.now, &mut fx);
            self.apply(asker, fx);
        }

        fn sweep(&mut self, shard: usize) {
            let mut fx = Vec::new();
            self.shards[shard].sweep_ledgers(self.now);
            self.shards[shard].sweep_leases(self.now, &mut fx);
            self.apply(shard, fx);
        }

        fn wake(&mut self, shard: usize) {
            let mut fx = Vec::new();
            self.shards[shard].wake(self.now, &mut fx);
            self.apply(shard, fx);
        }

        /// Delivers everything in flight, in order, until the network is quiet.
        fn settle_down(&mut self) {
            while !self.network.is_empty() {
                self.deliver(0);
            }
        }

        /// The largest excess of admissions over `burst + rate × t`, over every window
        /// (in tokens; ≤ 0 means the bound holds).
        fn worst_excess(&self) -> f64 {
            let mut admitted = self.admitted.clone();
            admitted.sort_unstable();
            let mut worst = f64::NEG_INFINITY;
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    let allowed = f64::from(self.quota.burst) + (end - start) as f64 / self.quota.interval_ns as f64;
                    worst = worst.max(count - allowed);
                }
            }
            worst
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Request { shard: usize, gap: Nanos },
        Deliver(usize),
        Lose(usize),
        Sweep { shard: usize, gap: Nanos },
        Wake(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            6 => (0..64_usize, 0..40_000_000_u64).prop_map(|(shard, gap)| Step::Request { shard, gap }),
            6 => (0..64_usize).prop_map(Step::Deliver),
            1 => (0..64_usize).prop_map(Step::Lose),
            1 => (0..64_usize, 0..800_000_000_u64).prop_map(|(shard, gap)| Step::Sweep { shard, gap }),
            1 => (0..64_usize).prop_map(Step::Wake),
        ];
        proptest::collection::vec(step, 1..400)
    }

    fn run(world: &mut World, steps: &[Step]) {
        let shards = world.shards.len();
        for step in steps {
            match *step {
                Step::Request { shard, gap } => {
                    world.now += gap;
                    world.request(shard % shards);
                }
                Step::Deliver(pick) => world.deliver(pick),
                Step::Lose(pick) => world.lose(pick),
                Step::Sweep { shard, gap } => {
                    world.now += gap;
                    world.sweep(shard % shards);
                }
                Step::Wake(shard) => world.wake(shard % shards),
            }
        }
        world.settle_down();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Many workers of one replica, requests landing on any of them, every message
        /// delayed, reordered or lost at the test's whim: never more than
        /// burst + rate × t over any window (S = 0).
        #[test]
        fn leases_never_beat_the_bucket(
            workers in 1..7_usize,
            rate in 1..60_u32,
            burst in 1..25_u32,
            steps in steps(),
        ) {
            let mut world = World::new(1, workers, quotas(rate, burst), Backend::Local);
            run(&mut world, &steps);
            let excess = world.worst_excess();
            prop_assert!(excess <= 1e-9, "{} workers admitted {} over the bound", workers, excess);
        }

        /// The same with Redis as the owner and several replicas holding leases from it:
        /// the cluster admits no more than one bucket (S' = 0).
        #[test]
        fn redis_leases_never_beat_the_bucket_across_replicas(
            replicas in 1..4_usize,
            workers in 1..5_usize,
            rate in 1..60_u32,
            burst in 1..25_u32,
            steps in steps(),
        ) {
            let mut world = World::new(replicas, workers, quotas(rate, burst), Backend::Redis);
            run(&mut world, &steps);
            let excess = world.worst_excess();
            prop_assert!(excess <= 1e-9, "{} replicas admitted {} over the bound", replicas, excess);
        }

        /// Whatever was spent where, once the network is quiet the client can still reach
        /// its whole bucket from any worker: recalls bring stranded tokens back.
        #[test]
        fn a_quiet_client_gets_its_whole_burst_back_on_any_worker(
            workers in 1..7_usize,
            burst in 1..25_u32,
            steps in steps(),
            last in 0..64_usize,
        ) {
            let mut world = World::new(1, workers, quotas(1, burst), Backend::Local);
            let no_losses: Vec<Step> = steps.into_iter().filter(|step| !matches!(step, Step::Lose(_))).collect();
            run(&mut world, &no_losses);
            // Long enough for every lease to expire and every bucket to refill.
            world.now += 60 * SECOND + u64::from(burst) * SECOND;
            for shard in 0..workers {
                world.sweep(shard);
            }
            world.settle_down();
            let before = world.admitted.len();
            let shard = last % workers;
            for _ in 0..burst + 5 {
                world.request(shard);
                world.settle_down();
                for owner in 0..workers {
                    world.wake(owner);
                }
                world.settle_down();
            }
            prop_assert_eq!(world.admitted.len() - before, burst as usize);
        }
    }

    /// Requests round-robin over the workers (a new connection per request), every message
    /// delivered at once: exactly the burst passes at one instant, then one per interval.
    #[test]
    fn spread_requests_get_exactly_the_bucket() {
        for workers in [1, 2, 3, 4, 8, 16] {
            let (rate, burst) = (5, 10);
            let mut world = World::new(1, workers, quotas(rate, burst), Backend::Local);
            let mut first_refusal = None;
            for request in 0..40 {
                world.request(request % workers);
                world.settle_down();
                for shard in 0..workers {
                    world.wake(shard);
                }
                world.settle_down();
                if world.refused > 0 && first_refusal.is_none() {
                    first_refusal = Some(world.admitted.len());
                }
            }
            assert_eq!(first_refusal, Some(10), "{workers} workers: the 11th request is the first refused");
            assert_eq!(world.admitted.len(), 10, "{workers} workers");
            world.now += SECOND;
            for request in 0..40 {
                world.request(request % workers);
                world.settle_down();
                for shard in 0..workers {
                    world.wake(shard);
                }
                world.settle_down();
            }
            assert_eq!(world.admitted.len(), 15, "{workers} workers: one more per 200 ms");
        }
    }

    /// One keep-alive connection on a worker that does not own the key: the RateLimit
    /// remaining it is told counts down exactly as one bucket would, the first refusal
    /// comes right after it said 0, and only a few asks reach the owner.
    #[test]
    fn a_holder_reports_what_one_bucket_would() {
        let mut world = World::new(1, 2, quotas(1, 40), Backend::Local);
        let holder = 1 - owner_of(&key(), 2);
        while world.refused == 0 {
            world.request(holder);
            world.settle_down();
            assert!(world.told.len() <= 41);
        }
        let remaining: Vec<u32> = world.told.iter().map(|decision| decision.remaining).collect();
        let mut expected: Vec<u32> = (0..40).rev().collect();
        expected.push(0);
        assert_eq!(remaining, expected, "counts down one by one, then refuses");
        assert_eq!(world.told.last().map(|refused| refused.retry_after), Some(Duration::from_secs(1)));
        assert!(world.shards[holder].stats.asks <= 12, "{} asks for 40 requests", world.shards[holder].stats.asks);
    }

    #[test]
    fn grants_are_at_most_half_of_what_is_available_and_expire_as_spent() {
        let quota = Quota::per_second(10, 10);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 1, 100, SECOND).unwrap();
        assert_eq!(grant.tokens, 5);
        assert_eq!(ledger.available(quota, 0), 5, "leased tokens do not count as available");
        assert_eq!(ledger.available(quota, 10 * SECOND), 5, "nor do they refill while out");
        assert_eq!(ledger.expire(quota, 2 * SECOND), 1);
        assert_eq!(ledger.available(quota, SECOND), 5, "counted as spent when the lease ended");
        assert_eq!(ledger.available(quota, SECOND + 300_000_000), 8, "then they refill");
    }

    #[test]
    fn a_settlement_returns_exactly_the_unspent_tokens() {
        let quota = Quota::per_second(1, 10);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 3, 4, SECOND).unwrap();
        assert_eq!(grant.tokens, 4);
        assert!(!ledger.settle(quota, 0, 2, Settlement { grant: grant.id, spent: 1 }), "only its holder");
        assert!(ledger.settle(quota, 0, 3, Settlement { grant: grant.id, spent: 1 }));
        assert_eq!(ledger.available(quota, 0), 9);
        assert!(!ledger.settle(quota, 0, 3, Settlement { grant: grant.id, spent: 0 }), "only once");
    }

    #[test]
    fn a_refusal_names_a_wait_after_which_a_request_passes() {
        let quota = Quota::per_second(2, 3);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 1, 1, 10 * SECOND).unwrap();
        while ledger.admit(quota, 0) {}
        let refused = ledger.decision(quota, 0, false);
        let wait = u64::try_from(refused.retry_after.as_nanos()).unwrap();
        assert!(ledger.clone().admit(quota, wait), "passes after {wait} ns");
        assert!(!ledger.clone().admit(quota, wait - 1));
        assert!(ledger.settle(quota, 0, 1, Settlement { grant: grant.id, spent: 0 }));
        assert!(ledger.admit(quota, 0), "the returned token passes at once");
    }
}
