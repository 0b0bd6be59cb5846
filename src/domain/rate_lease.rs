//! One client's bucket, decided by many deciders (the HTTP workers of a replica, the
//! replicas of a cluster) without multiplying it: leases of tokens.
//!
//! Every bucket has one **owner** holding its ledger: a GCRA TAT (`tat`, the debt of the
//! tokens spent) and the **grants** it has leased out and not had back. Locally the owner
//! is the limiter shard that the client key hashes to; with Redis it is the Redis hash of
//! the key (`actors::rate_limiter::redis` runs `Ledger::serve` there as a Lua script).
//! Any other decider (a **holder**) asks the owner to decide a request and may get a grant
//! of tokens with the answer, which it spends on its own thread with no message per request;
//! it settles the grant when it asks for the next one, when the owner recalls it, or before
//! it expires.
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
//! before it asked), so Φ is unchanged and H only loses. A grant the owner gave up waiting
//! for (**forfeit**, below) is charged in full when it is settled: the holder settles only
//! after its last spend, so that is the expiry rule applied earlier, and H only loses again.
//! A **charge** (what Redis admitted or leased for this replica, booked on the replica's
//! own ledger) only adds debt. Only time adds to Φ + H + A, at most `rate` per second (the
//! decay of `tat`). Since H ≤ outstanding, Φ + H ≤ burst at any instant, so over any window
//! of t seconds:
//!
//! ```text
//! admitted ≤ burst + rate × t          (S = 0: leases add no slack at all)
//! ```
//!
//! whatever the number of holders, their interleaving, or how messages are delayed,
//! reordered or lost (a lost message only strands tokens until the grant expires). Grant
//! ids come from one counter per replica that only grows, so a settlement that arrives
//! after its ledger was forgotten and made anew can never match a newer grant. A ledger is
//! forgotten only with no grant out and no request waiting: when it is full again (it
//! decides nothing differently), or to make room under `RATE_LIMIT_MAX_KEYS`, when its TAT
//! goes into the shard's **forgotten debts** (`Debts`, a fixed-size sketch: a key's entry
//! is never below the TAT it left with). Every new ledger starts from its key's entry, so a
//! client whose ledger was forgotten comes back no fuller than it left; a key that finds no
//! room at all (every candidate has grants out or requests waiting) is decided on its
//! entry there, with no ledger of its own and no lease.
//! This is checked on this module with a hand-driven clock
//! (`tests::leases_never_beat_the_bucket`, with ledgers forgotten and settlements reordered
//! across it). What can exceed it is outside the ledger: a ledger dropped by a panic
//! mid-decision or lost with a worker that died (that one client starts afresh), and
//! requests let through unasked while the limiter does not answer (the replica's fail-open
//! budget).
//!
//! # What a client is told
//!
//! A decision's remaining count is the owner's free tokens (for a holder: as of the owner's
//! last answer, refilled since) plus the tokens the deciding holder still holds. For a
//! client that sends one request at a time this is exact: the count its next request starts
//! from, wherever it lands. Leases are what could make it wrong (a holder's view goes stale
//! when another decider spends), so they are only of two kinds:
//!
//! - **sticky**: the owner's previous decision for the key was this holder's ask too (the
//!   client keeps coming back to it). Before the owner decides anything else for the key
//!   (its own request, another holder's ask) it recalls a sticky grant and holds that
//!   decision until the grant is settled; past `RECALL_WAIT` it decides without it and
//!   forfeits it, so no count jumps up later. The recall enters the holder's mailbox before
//!   the owner's answer leaves, so the client's next request on that holder is handled
//!   after it: a sticky grant is never spent on a stale view.
//! - **concurrent**: another request of the key arrived while the holder was asking, so
//!   the client's requests overlap and no order between them is promised. These are not
//!   recalled on every decision (owner and holders would pass them back and forth); a count
//!   told to such a client can be off by what other deciders hold or spent meanwhile.
//!
//! A client that alternates between workers therefore gets no lease at all: every decision
//! is the owner's. With Redis there is no recall, so holders lease only for concurrent
//! requests and a client sending one request at a time is decided by Redis every time.
//! `tests::a_sequential_client_is_told_what_decides` checks both with random deciders and
//! mailboxes delivered in order.
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
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
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
/// The longest an owner holds a decision while the holders it recalled settle: long enough
/// for a worker thread that a busy machine did not schedule at once, well under the time a
/// holder waits for an answer (so a held ask is answered, not abandoned).
pub const RECALL_WAIT: Nanos = 100 * MILLI;
/// Grants one ledger keeps out at once; past it, asks are answered without a grant.
pub const MAX_GRANTS_PER_KEY: usize = 64;
/// Requests of one key that wait on one holder for its ask to be answered.
pub const MAX_WAITING_PER_KEY: usize = 256;
/// Requests one owner holds while it recalls.
pub const MAX_PARKED: usize = 4096;
/// A holder's first lease for a key: a few tokens, so a steady client is not a message per request.
const FIRST_WANT: u32 = 4;
/// How many of the least recently used entries are looked at for one to forget when a new
/// key needs room (bounded work per request, whatever the number of keys).
const EVICTION_SCAN: usize = 16;
/// Rows of the forgotten-debts sketch (a key's entry is the least of its cells), and the
/// fewest cells per row: as many as the shard keeps ledgers, so that two keys share all
/// their cells rarely (8 bytes a cell, touched only when used).
const DEBT_ROWS: usize = 2;
const DEBT_MIN_WIDTH: usize = 4096;

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
    /// The holder saw requests of this key overlap (one arrived while it was asking).
    pub concurrent: bool,
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
    /// Leased because the client kept coming back to this holder (not for overlapping
    /// requests): any other decision for the key takes it back first.
    sticky: bool,
    /// The owner stopped waiting for it: charged in full when it is settled.
    forfeit: bool,
}

/// One bucket at its owner. Plain data on a clock passed in.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    tat: Nanos,
    grants: Vec<Outstanding>,
    /// The last grant id this ledger issued, used only where the ledger numbers its own
    /// grants (`serve`, the Redis ledger): it never goes below the clock, so it only grows
    /// across a ledger forgotten and made anew, as the Lua script's does.
    issued: u64,
}

impl Ledger {
    /// A new ledger whose debt runs until `tat` (what its key owed when it was forgotten).
    fn starting_at(tat: Nanos) -> Self {
        Self { tat, ..Self::default() }
    }

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

    /// Books `tokens` spent elsewhere for this client (Redis admitted or leased them to this
    /// replica), at most down to an empty bucket.
    pub fn charge(&mut self, quota: Quota, now: Nanos, tokens: u32) {
        let charged = self.tat.max(now).saturating_add(u64::from(tokens).saturating_mul(quota.interval_ns));
        self.tat = charged.min(now.saturating_add(quota.capacity_ns())).max(self.tat);
    }

    /// Leases up to `want` tokens (never more than half of what is available) to `holder`,
    /// as grant `id` (unique: the caller's counter only grows).
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        quota: Quota,
        now: Nanos,
        holder: usize,
        want: u32,
        ttl: Nanos,
        id: u64,
        sticky: bool,
    ) -> Option<Grant> {
        if self.grants.len() >= MAX_GRANTS_PER_KEY {
            return None;
        }
        let half = self.available(quota, now) / 2;
        let tokens = u32::try_from(half.min(u64::from(want.min(LEASE_MAX_TOKENS)))).ok().filter(|n| *n > 0)?;
        let grant = Grant { id, tokens, expires_at: now.saturating_add(ttl) };
        self.grants.push(Outstanding { grant, holder, recalled: false, sticky, forfeit: false });
        Some(grant)
    }

    /// Takes a grant back. False when it is not (or no longer) out, e.g. already expired.
    /// A forfeit grant is charged in full, whatever the holder spent of it.
    pub fn settle(&mut self, quota: Quota, now: Nanos, holder: usize, settlement: Settlement) -> bool {
        let Some(at) = self.grants.iter().position(|out| out.grant.id == settlement.grant && out.holder == holder)
        else {
            return false;
        };
        let out = self.grants.swap_remove(at);
        let spent = if out.forfeit { out.grant.tokens } else { settlement.spent.min(out.grant.tokens) };
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
        self.issued = self.issued.max(now);
        let grant =
            if allowed || !decide { self.grant(quota, now, holder, want, ttl, self.issued + 1, false) } else { None };
        if let Some(grant) = grant {
            self.issued = grant.id;
        }
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

    /// Marks the grants that `which` picks and that are not yet recalled as recalled;
    /// returns them as (holder, grant id).
    fn recall(&mut self, which: impl Fn(&Outstanding) -> bool) -> Vec<(usize, u64)> {
        self.grants
            .iter_mut()
            .filter(|out| !out.recalled && which(out))
            .map(|out| {
                out.recalled = true;
                (out.holder, out.grant.id)
            })
            .collect()
    }

    /// A recalled grant is still out and still waited for.
    fn awaiting_recall(&self) -> bool {
        self.grants.iter().any(|out| out.recalled && !out.forfeit)
    }

    /// A sticky grant is out with another holder than `decider`: it must come back before
    /// anything else is decided for the key.
    fn sticky_elsewhere(&self, decider: usize) -> bool {
        self.grants.iter().any(|out| out.sticky && !out.forfeit && out.holder != decider)
    }

    /// Stops waiting for what was recalled (and for sticky grants elsewhere than `decider`):
    /// they are charged in full when they come back, so the counts told meanwhile stay true.
    fn forfeit_waited_for(&mut self, decider: usize) {
        for out in &mut self.grants {
            if out.recalled || (out.sticky && out.holder != decider) {
                out.forfeit = true;
            }
        }
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

    /// The owner's last answer had tokens on lease to other holders.
    fn others_hold_tokens(&self) -> bool {
        self.view.outstanding > self.grant.map_or(0, |grant| u64::from(grant.tokens))
    }

    fn live_grant(&self, now: Nanos) -> bool {
        self.grant.is_some_and(|grant| now < grant.expires_at)
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
    /// Book on the local owner `owner` the tokens Redis admitted or leased to this shard,
    /// so that a fall-back to the local ledgers does not start them full.
    Charge { owner: usize, key: BucketKey, tokens: u32 },
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
    /// Ledgers forgotten to make room for a new key while every slot was in use, and
    /// decisions made on a key's forgotten debt alone because none could be forgotten.
    pub evicted: u64,
    pub unkept: u64,
}

struct Parked<R> {
    responder: R,
    /// An ask from a holder (answered with a `LeaseAnswer`) rather than a request here.
    ask: bool,
    /// Whose decision it is (this shard's holder id for its own requests).
    decider: usize,
    deadline: Nanos,
}

struct Owned<R> {
    ledger: Ledger,
    parked: VecDeque<Parked<R>>,
    /// Who made the last decision for this key: a holder asking again right after its own
    /// decision is a client that sticks to it.
    last_decider: Option<usize>,
}

impl<R> Owned<R> {
    fn new(ledger: Ledger) -> Self {
        Self { ledger, parked: VecDeque::new(), last_decider: None }
    }

    fn evictable(&self) -> bool {
        self.parked.is_empty() && self.ledger.grants.is_empty()
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
    /// Requests of this key overlapped when the last answer came (more than one waited).
    concurrent: bool,
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
            concurrent: false,
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
        self.is_quiet() && stale(&self.local) && stale(&self.redis)
    }

    /// Nothing waits on it: it can be forgotten (its grants given back first).
    fn is_quiet(&self) -> bool {
        self.asking.is_none() && self.waiting.is_empty() && self.recalled.is_empty()
    }
}

enum Route {
    Now(Decision),
    /// Held at this owner until a recall settles (or `RECALL_WAIT`).
    Park,
    /// Waiting for this holder's ask to be answered.
    Wait,
}

/// How the owner dealt with one decision for a key it owns.
enum AtOwner {
    /// Decided on the key's ledger; `repeat`: the same decider had the previous decision.
    Decided { allowed: bool, repeat: bool },
    /// No room for the key's ledger: decided on its forgotten debt alone.
    Unkept(Ledger, bool),
    /// Held until what was recalled comes back.
    Park,
}

/// What forgotten ledgers still owed, in fixed memory: per row, a cell per hash of the
/// key holding the latest TAT of any key forgotten into it. A key's entry is the least of
/// its cells, so it is never below the TAT the key itself left with, and above it only
/// when every one of its cells is shared with a key further in debt (then the newcomer
/// starts emptier than it should: conservative, and it refills). TATs in the past mean no
/// debt, so nothing needs clearing.
struct Debts {
    rows: [Vec<Nanos>; DEBT_ROWS],
}

impl Debts {
    fn new(width: usize) -> Self {
        Self { rows: std::array::from_fn(|_| vec![0; width.max(1)]) }
    }

    fn cells(&self, key: &BucketKey) -> [usize; DEBT_ROWS] {
        std::array::from_fn(|row| {
            let mut hasher = DefaultHasher::new();
            (row, key).hash(&mut hasher);
            usize::try_from(hasher.finish() % self.rows[row].len() as u64).unwrap_or(0)
        })
    }

    /// The TAT a new ledger for `key` starts from.
    fn owed(&self, key: &BucketKey) -> Nanos {
        let cells = self.cells(key);
        (0..DEBT_ROWS).map(|row| self.rows[row][cells[row]]).min().unwrap_or(0)
    }

    fn remember(&mut self, key: &BucketKey, tat: Nanos) {
        let cells = self.cells(key);
        for (row, cell) in cells.into_iter().enumerate() {
            self.rows[row][cell] = self.rows[row][cell].max(tat);
        }
    }

    /// The ledger `key` would have: its forgotten debt, nothing on lease.
    fn ledger(&self, key: &BucketKey) -> Ledger {
        Ledger::starting_at(self.owed(key))
    }
}

/// The limiter of one shard (an HTTP worker): owner of the keys that hash to its slot,
/// holder of leases for the others, and (with Redis) holder of Redis leases for all.
/// `R` is how a waiting request is answered later.
pub struct ShardCore<R> {
    /// This shard's slot: the keys hashing to it are owned here. `None` (a worker started
    /// when every slot was taken by a live shard) owns nothing.
    slot: Option<usize>,
    workers: usize,
    quotas: Quotas,
    max_keys: NonZeroUsize,
    owned: LruCache<BucketKey, Owned<R>>,
    held: LruCache<BucketKey, Held<R>>,
    debts: Debts,
    parked_keys: Vec<BucketKey>,
    /// Grant ids, shared by the shards of a replica and only growing, across ledgers
    /// forgotten and shards made anew.
    grant_ids: Arc<AtomicU64>,
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
    pub fn new(
        slot: Option<usize>,
        workers: usize,
        quotas: Quotas,
        max_keys: NonZeroUsize,
        grant_ids: Arc<AtomicU64>,
    ) -> Self {
        Self {
            slot,
            workers: workers.max(1),
            quotas,
            max_keys,
            owned: LruCache::unbounded(),
            held: LruCache::unbounded(),
            debts: Debts::new(max_keys.get().max(DEBT_MIN_WIDTH)),
            parked_keys: Vec::new(),
            grant_ids,
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
        self.max_keys
    }

    pub fn parked_len(&self) -> usize {
        self.parked_keys.iter().filter_map(|key| self.owned.peek(key)).map(|owned| owned.parked.len()).sum()
    }

    fn holder_id(&self) -> usize {
        self.slot.unwrap_or(self.workers)
    }

    fn next_grant_id(&self) -> u64 {
        self.grant_ids.fetch_add(1, Ordering::Relaxed).saturating_add(1)
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

    /// Makes sure `key` has a ledger here, forgetting another to make room if every slot is
    /// in use; false when none can be forgotten (each has grants out or requests waiting).
    fn make_room(&mut self, key: BucketKey, now: Nanos) -> bool {
        if self.owned.contains(&key) {
            return true;
        }
        if self.owned.len() >= self.max_keys.get() {
            // The full ones first (forgetting them changes nothing), else the least in debt.
            let victim = self
                .owned
                .iter()
                .rev()
                .take(EVICTION_SCAN)
                .filter(|(_, owned)| owned.evictable())
                .min_by_key(|(_, owned)| (!owned.ledger.is_idle(now), owned.ledger.tat))
                .map(|(key, _)| *key);
            let Some(victim) = victim else { return false };
            self.forget_owned(victim, now);
            self.stats.evicted += 1;
        }
        self.owned.put(key, Owned::new(self.debts.ledger(&key)));
        true
    }

    /// Forgets a ledger with nothing out and nobody waiting; its debt is remembered.
    fn forget_owned(&mut self, key: BucketKey, now: Nanos) {
        if let Some(owned) = self.owned.pop(&key) {
            if owned.ledger.tat > now {
                self.debts.remember(&key, owned.ledger.tat);
            }
        }
        self.parked_keys.retain(|parked| *parked != key);
    }

    /// Makes sure `key` has an entry as a holder, forgetting a quiet one to make room (its
    /// grant given back); false when every candidate has requests waiting.
    fn make_held_room(&mut self, key: BucketKey, now: Nanos, fx: &mut Vec<Effect<R>>) -> bool {
        if self.held.contains(&key) {
            return true;
        }
        if self.held.len() >= self.max_keys.get() {
            let victim = self
                .held
                .iter()
                .rev()
                .take(EVICTION_SCAN)
                .filter(|(_, held)| held.is_quiet())
                .min_by_key(|(_, held)| !held.is_stale(now))
                .map(|(key, _)| *key);
            let Some(victim) = victim else { return false };
            if let Some(mut held) = self.held.pop(&victim) {
                let owner = owner_of(&victim, self.workers);
                for backend in [Backend::Local, Backend::Redis] {
                    if let Some(settlement) = held.lease(backend).as_mut().and_then(|lease| lease.settle(now)) {
                        fx.push(settle_effect(backend, owner, victim, settlement));
                    }
                }
            }
            self.stats.evicted += 1;
        }
        self.held.put(key, Held::default());
        true
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
                let decider = self.holder_id();
                self.park(key, now, responder(), false, decider, fx);
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
        match self.decide_owned(key, now, self.holder_id(), fx) {
            AtOwner::Decided { allowed, .. } => match self.owned.peek(&key) {
                Some(owned) => Route::Now(owned.ledger.decision(quota, now, allowed)),
                None => Route::Now(busy()),
            },
            AtOwner::Unkept(ledger, allowed) => Route::Now(ledger.decision(quota, now, allowed)),
            AtOwner::Park => Route::Park,
        }
    }

    /// One decision at the owner, for its own request or a holder's ask (`decider`). Those
    /// already held go first; a sticky grant elsewhere comes back first; an empty bucket
    /// recalls what is out and waits for it.
    fn decide_owned(&mut self, key: BucketKey, now: Nanos, decider: usize, fx: &mut Vec<Effect<R>>) -> AtOwner {
        let quota = self.quota(&key, Backend::Local);
        if !self.make_room(key, now) {
            self.stats.unkept += 1;
            let mut ledger = self.debts.ledger(&key);
            let allowed = ledger.admit(quota, now);
            self.debts.remember(&key, ledger.tat);
            return AtOwner::Unkept(ledger, allowed);
        }
        let Some(owned) = self.owned.get_mut(&key) else { return AtOwner::Unkept(self.debts.ledger(&key), false) };
        self.stats.expired += owned.ledger.expire(quota, now);
        if !owned.parked.is_empty() {
            self.release(key, now, fx);
        }
        let Some(owned) = self.owned.peek_mut(&key) else { return AtOwner::Unkept(self.debts.ledger(&key), false) };
        let must_wait = if !owned.parked.is_empty() {
            true
        } else if owned.ledger.sticky_elsewhere(decider) {
            let recalled = owned.ledger.recall(|out| out.sticky && !out.forfeit && out.holder != decider);
            self.send_recalls(key, recalled, fx);
            true
        } else if owned.ledger.admit(quota, now) {
            let repeat = owned.last_decider.replace(decider) == Some(decider);
            return AtOwner::Decided { allowed: true, repeat };
        } else {
            let recalled = owned.ledger.recall(|_| true);
            let waiting = owned.ledger.awaiting_recall();
            self.send_recalls(key, recalled, fx);
            waiting
        };
        if must_wait && self.parked_len() < MAX_PARKED {
            return AtOwner::Park;
        }
        // Too many held already: decide now, without what is out (and never count it back).
        let Some(owned) = self.owned.peek_mut(&key) else { return AtOwner::Unkept(self.debts.ledger(&key), false) };
        owned.ledger.forfeit_waited_for(decider);
        let allowed = owned.ledger.admit(quota, now);
        owned.last_decider = Some(decider);
        AtOwner::Decided { allowed, repeat: false }
    }

    fn send_recalls(&mut self, key: BucketKey, mut recalled: Vec<(usize, u64)>, fx: &mut Vec<Effect<R>>) {
        recalled.sort_unstable();
        for holder_grants in recalled.chunk_by(|a, b| a.0 == b.0) {
            let holder = holder_grants[0].0;
            fx.push(Effect::Recall { holder, key, grants: holder_grants.iter().map(|(_, grant)| *grant).collect() });
            self.stats.recalls += 1;
        }
    }

    fn park(&mut self, key: BucketKey, now: Nanos, responder: R, ask: bool, decider: usize, fx: &mut Vec<Effect<R>>) {
        let deadline = now.saturating_add(RECALL_WAIT);
        if let Some(owned) = self.owned.peek_mut(&key) {
            owned.parked.push_back(Parked { responder, ask, decider, deadline });
            if !self.parked_keys.contains(&key) {
                self.parked_keys.push(key);
            }
            fx.push(Effect::WakeAt(deadline));
        }
    }

    fn route_held(&mut self, key: BucketKey, now: Nanos, backend: Backend, fx: &mut Vec<Effect<R>>) -> Route {
        let quota = self.quota(&key, backend);
        let (from, owner) = (self.holder_id(), owner_of(&key, self.workers));
        if !self.make_held_room(key, now, fx) {
            // Every entry has requests waiting: refuse rather than forget one of them.
            return Route::Now(busy());
        }
        let Some(held) = self.held.get_mut(&key) else { return Route::Now(busy()) };
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
        // Refused on the owner's last word, unless another worker holds tokens the owner
        // could recall for this request (Redis cannot recall: its word stands).
        let may_recall = |lease: &Lease| backend == Backend::Local && lease.others_hold_tokens();
        if let Some(lease) = slot.as_ref().filter(|lease| now < lease.view.retry_at && !may_recall(lease)) {
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
        let concurrent = held.concurrent;
        // Redis cannot recall a lease, so one is asked for only while requests overlap.
        let want = if backend == Backend::Redis && !concurrent { 0 } else { held.want.max(backlog.saturating_add(1)) };
        let ask = LeaseAsk { key, from, settle, want, concurrent };
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
        if let Some(settlement) = ask.settle {
            if let Some(owned) = self.owned.get_mut(&key) {
                self.stats.expired += owned.ledger.expire(quota, now);
                self.stats.settlements += u64::from(owned.ledger.settle(quota, now, ask.from, settlement));
            }
        }
        let answer = match self.decide_owned(key, now, ask.from, fx) {
            AtOwner::Decided { allowed, repeat } => {
                let id = self.next_grant_id();
                self.owned.peek_mut(&key).map(|owned| {
                    // A lease only to a holder the client sticks to, or whose requests overlap.
                    let grant = (allowed && (repeat || ask.concurrent))
                        .then(|| {
                            owned.ledger.grant(quota, now, ask.from, ask.want, LOCAL_LEASE_TTL, id, !ask.concurrent)
                        })
                        .flatten();
                    if let Some(grant) = grant {
                        self.stats.grants += 1;
                        self.stats.tokens_granted += u64::from(grant.tokens);
                    }
                    LeaseAnswer { allowed, grant, view: owned.ledger.view(quota, now) }
                })
            }
            AtOwner::Unkept(ledger, allowed) => {
                Some(LeaseAnswer { allowed, grant: None, view: ledger.view(quota, now) })
            }
            AtOwner::Park => {
                self.park(key, now, responder(), true, ask.from, fx);
                None
            }
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
        if let Some(owned) = self.owned.get_mut(&key) {
            self.stats.expired += owned.ledger.expire(quota, now);
            self.stats.settlements += u64::from(owned.ledger.settle(quota, now, from, settlement));
        }
        self.release(key, now, fx);
    }

    /// An owner books tokens Redis admitted or leased to one of this replica's shards.
    pub fn on_charge(&mut self, key: BucketKey, tokens: u32, now: Nanos) {
        let quota = self.quota(&key, Backend::Local);
        if self.make_room(key, now) {
            if let Some(owned) = self.owned.get_mut(&key) {
                owned.ledger.charge(quota, now, tokens);
            }
        } else {
            let mut ledger = self.debts.ledger(&key);
            ledger.charge(quota, now, tokens);
            self.debts.remember(&key, ledger.tat);
        }
    }

    /// Serves held requests in order; each waits until nothing recalled is still out, or
    /// until its deadline, when whatever has not come back is forfeit.
    fn release(&mut self, key: BucketKey, now: Nanos, fx: &mut Vec<Effect<R>>) {
        let quota = self.quota(&key, Backend::Local);
        let Some(owned) = self.owned.peek_mut(&key) else {
            self.parked_keys.retain(|parked| *parked != key);
            return;
        };
        while let Some(front) = owned.parked.front() {
            if owned.ledger.awaiting_recall() {
                if front.deadline > now {
                    break;
                }
                owned.ledger.forfeit_waited_for(front.decider);
            }
            if let Some(parked) = owned.parked.pop_front() {
                let allowed = owned.ledger.admit(quota, now);
                owned.last_decider = Some(parked.decider);
                fx.push(answer_parked(&owned.ledger, quota, now, parked, allowed));
            }
        }
        if owned.parked.is_empty() {
            self.parked_keys.retain(|parked| *parked != key);
        }
    }

    /// Held requests whose wait is over are decided.
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
        if backend == Backend::Redis {
            if let Ok(answer) = &answer {
                let tokens = u32::from(answer.allowed).saturating_add(answer.grant.map_or(0, |grant| grant.tokens));
                if tokens > 0 {
                    self.charge_local(key, tokens, now, fx);
                }
            }
        }
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
                held.concurrent = waiting.len() > 1;
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

    /// Books on this replica's own ledger what Redis admitted or leased here.
    fn charge_local(&mut self, key: BucketKey, tokens: u32, now: Nanos, fx: &mut Vec<Effect<R>>) {
        if self.owns(&key) {
            self.on_charge(key, tokens, now);
        } else {
            fx.push(Effect::Charge { owner: owner_of(&key, self.workers), key, tokens });
        }
    }

    fn recheck(&mut self, key: BucketKey, now: Nanos, backend: Backend, responder: R, fx: &mut Vec<Effect<R>>) {
        match self.route(key, now, backend, fx) {
            Route::Now(decision) => fx.push(Effect::Decide(responder, Some(decision))),
            Route::Park => {
                let decider = self.holder_id();
                self.park(key, now, responder, false, decider, fx);
            }
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
        // No entry: no grant held and none on the way (an ask in flight keeps its entry).
        let Some(held) = self.held.peek_mut(&key) else { return };
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
            self.forget_owned(key, now);
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

    /// Whether this shard holds a grant it may still spend for `key` (reports, tests).
    pub fn holds_lease(&self, key: &BucketKey, now: Nanos) -> bool {
        self.held.peek(key).is_some_and(|held| {
            held.local.is_some_and(|lease| lease.live_grant(now))
                || held.redis.is_some_and(|lease| lease.live_grant(now))
        })
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
    /// Decide the waiting requests again on the local ledgers (a Redis call failed).
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

/// A refusal when no decision can be tracked: a key flooded beyond `MAX_WAITING_PER_KEY`
/// before any answer came, or a holder whose every entry has requests waiting.
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
    use std::{collections::HashMap, net::IpAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::domain::rate_limit::{ClientKey, Policy};

    const SECOND: Nanos = 1_000_000_000;

    fn key() -> BucketKey {
        (Policy::Default, ClientKey::Ip(IpAddr::from([192, 0, 2, 1])))
    }

    /// Other clients, which only press on the key cap.
    fn stranger(n: usize) -> BucketKey {
        (Policy::Default, ClientKey::Ip(IpAddr::from([198, 51, 100, u8::try_from(n % 200).unwrap()])))
    }

    fn quotas(rate: u32, burst: u32) -> Quotas {
        Quotas { default: Quota::per_second(rate, burst), auth: Quota::per_minute(3) }
    }

    fn ids() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(0))
    }

    /// How a waiting request or ask is answered in the simulation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum To {
        /// A request of the client under test.
        Request,
        /// A request of another client.
        Stranger,
        /// A holder's ask (the holder's shard and the key).
        Holder(usize, BucketKey),
    }

    /// Whose mailbox a message is in: a shard's, or this shard's connection to Redis.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mailbox {
        Shard(usize),
        Redis(usize),
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
            key: BucketKey,
            backend: Backend,
            answer: LeaseAnswer,
            decided_at: Nanos,
        },
        Settle {
            to: usize,
            from: usize,
            key: BucketKey,
            settlement: Settlement,
        },
        Recall {
            to: usize,
            owner: usize,
            key: BucketKey,
            grants: Vec<u64>,
        },
        Charge {
            to: usize,
            key: BucketKey,
            tokens: u32,
        },
        AskRedis {
            from_shard: usize,
            ask: LeaseAsk,
        },
        SettleRedis {
            from_shard: usize,
            key: BucketKey,
            settlement: Settlement,
        },
    }

    impl Msg {
        fn mailbox(&self) -> Mailbox {
            match *self {
                Msg::Ask { to, .. }
                | Msg::Reply { to, .. }
                | Msg::Settle { to, .. }
                | Msg::Recall { to, .. }
                | Msg::Charge { to, .. } => Mailbox::Shard(to),
                Msg::AskRedis { from_shard, .. } | Msg::SettleRedis { from_shard, .. } => Mailbox::Redis(from_shard),
            }
        }
    }

    /// Replicas of `workers` shards each, a network that delivers, delays, reorders or
    /// loses whatever the test says (or, with `in_order`, delivers each mailbox in the order
    /// it was filled, as actix and a Redis connection do), clients, and a clock moved by hand.
    struct World {
        quota: Quota,
        workers: usize,
        backend: Backend,
        shards: Vec<ShardCore<To>>,
        redis: HashMap<BucketKey, Ledger>,
        network: Vec<Msg>,
        in_order: bool,
        now: Nanos,
        admitted: Vec<Nanos>,
        refused: usize,
        /// Every decision the client under test was told, with when, in order.
        told: Vec<(Nanos, Decision)>,
    }

    impl World {
        fn new(replicas: usize, workers: usize, quotas: Quotas, backend: Backend) -> Self {
            Self::with_cap(replicas, workers, quotas, backend, 16)
        }

        fn with_cap(replicas: usize, workers: usize, quotas: Quotas, backend: Backend, max_keys: usize) -> Self {
            let max_keys = NonZeroUsize::new(max_keys).unwrap();
            let counters: Vec<Arc<AtomicU64>> = (0..replicas).map(|_| ids()).collect();
            let shards = (0..replicas * workers)
                .map(|i| {
                    ShardCore::new(Some(i % workers), workers, quotas, max_keys, Arc::clone(&counters[i / workers]))
                })
                .collect();
            let quota = match backend {
                Backend::Local => quotas.default,
                Backend::Redis => quotas.default.in_whole_micros(),
            };
            Self {
                quota,
                workers,
                backend,
                shards,
                redis: HashMap::new(),
                network: Vec::new(),
                in_order: false,
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
            let now = self.now;
            for effect in fx {
                let message = match effect {
                    Effect::Decide(To::Request, decision) => {
                        self.count(decision);
                        continue;
                    }
                    Effect::Decide(To::Stranger, _) | Effect::WakeAt(_) => continue,
                    Effect::Decide(To::Holder(..), _) => unreachable!("asks are answered with Answer"),
                    Effect::Answer(To::Holder(to, key), answer) => {
                        Msg::Reply { to, key, backend: Backend::Local, answer, decided_at: now }
                    }
                    Effect::Answer(..) => unreachable!("requests are answered with Decide"),
                    Effect::Ask { owner, ask } => Msg::Ask { to: base + owner, from_shard: shard, ask },
                    Effect::AskRedis { ask } => Msg::AskRedis { from_shard: shard, ask },
                    Effect::Settle { owner, key, settlement } => {
                        Msg::Settle { to: base + owner, from: shard - base, key, settlement }
                    }
                    Effect::SettleRedis { key, settlement } => Msg::SettleRedis { from_shard: shard, key, settlement },
                    Effect::Recall { holder, key, grants } => {
                        Msg::Recall { to: base + holder, owner: shard - base, key, grants }
                    }
                    Effect::Charge { owner, key, tokens } => Msg::Charge { to: base + owner, key, tokens },
                };
                self.network.push(message);
            }
        }

        fn count(&mut self, decision: Option<Decision>) {
            self.told.extend(decision.map(|decision| (self.now, decision)));
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

        fn request_of_stranger(&mut self, shard: usize, stranger_key: BucketKey) {
            let mut fx = Vec::new();
            self.shards[shard].check(stranger_key, self.now, self.backend, || To::Stranger, &mut fx);
            self.apply(shard, fx);
        }

        fn redis_serve(
            &mut self,
            key: BucketKey,
            holder: usize,
            settle: Option<Settlement>,
            ask: Option<u32>,
        ) -> LeaseAnswer {
            let (quota, now) = (self.quota, self.now);
            let ledger = self.redis.entry(key).or_default();
            ledger.serve(quota, now, holder, settle, ask.is_some(), ask.unwrap_or(0), REDIS_LEASE_TTL)
        }

        /// Delivers one message: the `pick`th in flight or, in order, the oldest in its mailbox.
        fn deliver(&mut self, pick: usize) {
            if self.network.is_empty() {
                return;
            }
            let mut at = pick % self.network.len();
            if self.in_order {
                let mailbox = self.network[at].mailbox();
                at = self.network.iter().position(|message| message.mailbox() == mailbox).unwrap_or(at);
            }
            let message = self.network.remove(at);
            let (now, mut fx) = (self.now, Vec::new());
            let shard = match message {
                Msg::Ask { to, from_shard, ask } => {
                    if let Some(answer) = self.shards[to].on_ask(ask, now, || To::Holder(from_shard, ask.key), &mut fx)
                    {
                        self.network.push(Msg::Reply {
                            to: from_shard,
                            key: ask.key,
                            backend: Backend::Local,
                            answer,
                            decided_at: now,
                        });
                    }
                    to
                }
                Msg::Reply { to, key: replied, backend, answer, decided_at } => {
                    self.shards[to].on_answer(replied, backend, Ok(answer), now, &mut fx);
                    // The first request decided is the asker, admitted back when the owner said so.
                    let first = fx.iter().position(|effect| matches!(effect, Effect::Decide(..)));
                    if let Some(Effect::Decide(To::Request, Some(decision))) = first.map(|at| &fx[at]) {
                        if replied == key() && answer.allowed && decision.allowed {
                            self.admitted.push(decided_at);
                            self.told.push((now, *decision));
                            fx.remove(first.unwrap_or_default());
                        }
                    }
                    to
                }
                Msg::Settle { to, from, key, settlement } => {
                    self.shards[to].on_settle(from, key, settlement, now, &mut fx);
                    to
                }
                Msg::Recall { to, owner, key, grants } => {
                    self.shards[to].on_recall(owner, key, &grants, now, &mut fx);
                    to
                }
                Msg::Charge { to, key, tokens } => {
                    self.shards[to].on_charge(key, tokens, now);
                    to
                }
                Msg::AskRedis { from_shard, ask } => {
                    let answer = self.redis_serve(ask.key, from_shard, ask.settle, Some(ask.want));
                    self.network.push(Msg::Reply {
                        to: from_shard,
                        key: ask.key,
                        backend: Backend::Redis,
                        answer,
                        decided_at: now,
                    });
                    from_shard
                }
                Msg::SettleRedis { from_shard, key, settlement } => {
                    self.redis_serve(key, from_shard, Some(settlement), None);
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
            let (asker, asked, backend) = match message {
                Msg::Ask { from_shard, ask, .. } => (from_shard, ask.key, Backend::Local),
                Msg::AskRedis { from_shard, ask } => (from_shard, ask.key, Backend::Redis),
                Msg::Reply { to, key, backend, .. } => (to, key, backend),
                _ => return,
            };
            let mut fx = Vec::new();
            self.shards[asker].on_answer(asked, backend, Err(NoAnswer { fall_back: false }), self.now, &mut fx);
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

        /// A client that sends its next request only once the last was answered, to
        /// `shard`: what is already in that shard's mailbox is handled first (it was queued
        /// before the answer that let the client send again), then the request, then the
        /// network runs (in `picks` order) until it is decided.
        fn sequential_request(&mut self, shard: usize, picks: &mut impl Iterator<Item = usize>) {
            while let Some(at) = self.network.iter().position(|message| message.mailbox() == Mailbox::Shard(shard)) {
                self.deliver(at);
            }
            let before = self.told.len();
            self.request(shard);
            while self.told.len() == before {
                assert!(!self.network.is_empty(), "a request waits with nothing in flight");
                self.deliver(picks.next().unwrap_or(0));
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

        /// What a client sending one request at a time may rely on, pair by pair: told one or
        /// more remain, the next request passes; refused, a request after Retry-After passes;
        /// and a count is never above the last one plus what refilled in between, less the
        /// request it decides. `Err` names the first pair that breaks it.
        fn told_is_true(&self) -> Result<(), String> {
            let interval = self.quota.interval_ns;
            for (n, pair) in self.told.windows(2).enumerate() {
                let ((at, told), (next_at, next)) = (pair[0], pair[1]);
                let refilled = (next_at - at).div_ceil(interval);
                let waited_enough = !told.allowed && Duration::from_nanos(next_at - at) >= told.retry_after;
                if ((told.allowed && told.remaining >= 1) || waited_enough) && !next.allowed {
                    return Err(format!("request {n} told {told:?}, then request {} refused: {next:?}", n + 1));
                }
                if next.allowed && u64::from(next.remaining) + 1 > u64::from(told.remaining) + refilled {
                    return Err(format!(
                        "request {n} told {} remain, then request {} told {} with {refilled} refilled",
                        told.remaining,
                        n + 1,
                        next.remaining
                    ));
                }
            }
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Request {
            shard: usize,
            gap: Nanos,
        },
        Deliver(usize),
        Lose(usize),
        Sweep {
            shard: usize,
            gap: Nanos,
        },
        Wake(usize),
        /// Time jumps past every lease and refill and owners forget their ledgers, with
        /// whatever is in flight still in flight (so it arrives at ledgers made anew).
        Forget {
            gap: Nanos,
        },
        /// Another client's request, pressing on a small key cap.
        Stranger {
            shard: usize,
            client: usize,
        },
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            6 => (0..64_usize, 0..40_000_000_u64).prop_map(|(shard, gap)| Step::Request { shard, gap }),
            6 => (0..64_usize).prop_map(Step::Deliver),
            1 => (0..64_usize).prop_map(Step::Lose),
            1 => (0..64_usize, 0..800_000_000_u64).prop_map(|(shard, gap)| Step::Sweep { shard, gap }),
            1 => (0..64_usize).prop_map(Step::Wake),
            1 => (5 * SECOND..12 * SECOND).prop_map(|gap| Step::Forget { gap }),
            2 => (0..64_usize, 0..6_usize).prop_map(|(shard, client)| Step::Stranger { shard, client }),
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
                Step::Forget { gap } => {
                    world.now += gap;
                    for shard in 0..shards {
                        world.shards[shard].sweep_ledgers(world.now);
                    }
                }
                Step::Stranger { shard, client } => world.request_of_stranger(shard % shards, stranger(client)),
            }
        }
        world.settle_down();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Many workers of one replica, requests landing on any of them, every message
        /// delayed, reordered or lost at the test's whim, ledgers forgotten with settlements
        /// still in flight, other clients pressing on a key cap of 1 to 4 per shard: never
        /// more than burst + rate × t over any window (S = 0).
        #[test]
        fn leases_never_beat_the_bucket(
            workers in 1..7_usize,
            rate in 1..60_u32,
            burst in 1..25_u32,
            max_keys in 1..5_usize,
            steps in steps(),
        ) {
            let mut world = World::with_cap(1, workers, quotas(rate, burst), Backend::Local, max_keys);
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

        /// A client that sends one request at a time, each to any worker (or, with Redis, any
        /// worker of any replica), with housekeeping between: what it is told decides. While
        /// it says one or more remain, the next request passes; after a refusal's Retry-After
        /// a request passes; and no count is more than the last one plus what refilled since.
        #[test]
        fn a_sequential_client_is_told_what_decides(
            redis in any::<bool>(),
            replicas in 1..3_usize,
            workers in 1..5_usize,
            rate in 1..60_u32,
            burst in 1..25_u32,
            requests in proptest::collection::vec((0..64_usize, 0..300_000_000_u64, 0..12_u8), 1..120),
            picks in proptest::collection::vec(0..64_usize, 0..400),
        ) {
            let (backend, replicas) = if redis { (Backend::Redis, replicas) } else { (Backend::Local, 1) };
            let mut world = World::new(replicas, workers, quotas(rate, burst), backend);
            world.in_order = true;
            let shards = world.shards.len();
            let mut picks = picks.into_iter().cycle();
            for (shard, gap, chore) in requests {
                world.now += gap;
                if chore == 0 {
                    world.sweep(shard % shards);
                }
                world.sequential_request(shard % shards, &mut picks);
            }
            if let Err(broken) = world.told_is_true() {
                prop_assert!(false, "{}: {:?}", broken, world.told);
            }
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

    /// The reviewer's client: a new connection per request alternates between the worker
    /// that owns its key and the other one. It was told 9, 8, 3, 7, 2, 6, 1, 5, 0, 4 and
    /// then refused; each count is now the one its next request starts from.
    #[test]
    fn a_client_alternating_workers_is_told_one_less_each_time() {
        let mut world = World::new(1, 2, quotas(5, 10), Backend::Local);
        world.in_order = true;
        let owner = owner_of(&key(), 2);
        let mut picks = std::iter::repeat(0);
        for request in 0..11 {
            world.sequential_request(if request % 2 == 0 { owner } else { 1 - owner }, &mut picks);
        }
        let told: Vec<(bool, u32)> = world.told.iter().map(|(_, told)| (told.allowed, told.remaining)).collect();
        let mut expected: Vec<(bool, u32)> = (0..10).rev().map(|left| (true, left)).collect();
        expected.push((false, 0));
        assert_eq!(told, expected);
        assert_eq!(world.shards[owner].stats.grants, 0, "no lease for a client that does not stick to a worker");
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
        let remaining: Vec<u32> = world.told.iter().map(|(_, decision)| decision.remaining).collect();
        let mut expected: Vec<u32> = (0..40).rev().collect();
        expected.push(0);
        assert_eq!(remaining, expected, "counts down one by one, then refuses");
        assert_eq!(world.told.last().map(|(_, refused)| refused.retry_after), Some(Duration::from_secs(1)));
        assert!(world.shards[holder].stats.asks <= 12, "{} asks for 40 requests", world.shards[holder].stats.asks);
    }

    /// A client that stuck to one worker (a sticky lease) then sends a request to the owner:
    /// the owner takes the lease back before it decides, so the count it tells is the one
    /// the client had; and when the holder does not answer in time, the owner decides
    /// without the lease and forfeits it, so no later count goes up.
    #[test]
    fn a_sticky_lease_comes_back_before_the_owner_decides() {
        for holder_answers in [true, false] {
            let mut world = World::new(1, 2, quotas(1, 40), Backend::Local);
            world.in_order = true;
            let (owner, holder) = (owner_of(&key(), 2), 1 - owner_of(&key(), 2));
            let mut picks = std::iter::repeat(0);
            for _ in 0..4 {
                world.sequential_request(holder, &mut picks);
            }
            assert!(world.shards[holder].holds_lease(&key(), world.now), "the client stuck to the holder");
            let before = world.told.last().map(|(_, told)| told.remaining).unwrap();
            let mut fx = Vec::new();
            let decided = world.shards[owner].check(key(), world.now, Backend::Local, || To::Request, &mut fx);
            assert!(decided.is_none(), "held until the lease is back");
            world.apply(owner, fx);
            if holder_answers {
                world.settle_down();
            } else {
                world.network.clear();
                world.now += RECALL_WAIT;
                world.wake(owner);
            }
            let (_, told) = *world.told.last().unwrap();
            assert!(told.allowed);
            if holder_answers {
                assert_eq!(told.remaining, before - 1, "one less than the holder said");
            } else {
                assert!(told.remaining < before, "decided without the lease: {} after {before}", told.remaining);
                // The lease comes back late: charged in full, so the next count is no higher.
                let grant = world.shards[owner].owned.peek(&key()).unwrap().ledger.grants[0].grant;
                let mut fx = Vec::new();
                world.shards[owner].on_settle(
                    holder,
                    key(),
                    Settlement { grant: grant.id, spent: 0 },
                    world.now,
                    &mut fx,
                );
                let mut fx = Vec::new();
                let next =
                    world.shards[owner].check(key(), world.now, Backend::Local, || To::Request, &mut fx).unwrap();
                assert_eq!(next.remaining + 1, told.remaining);
            }
        }
    }

    /// The reviewer's harness: a settlement delayed past its grant's expiry, a ledger
    /// forgotten and made anew, a new grant to the same holder. Grant ids used to restart at
    /// 1, so the old settlement matched the new grant and 14 passed at once with a burst of 10.
    #[test]
    fn a_settlement_from_before_a_ledger_was_forgotten_matches_nothing() {
        let mut world = World::new(1, 2, quotas(5, 10), Backend::Local);
        let (owner, holder) = (owner_of(&key(), 2), 1 - owner_of(&key(), 2));
        for _ in 0..2 {
            world.request(holder);
            world.settle_down();
        }
        assert!(world.shards[holder].holds_lease(&key(), world.now));
        // Near its expiry the holder gives the grant back; that message is delayed.
        world.now = 4_600_000_000;
        world.sweep(holder);
        let stale = world.network.pop().expect("the holder settles");
        assert!(matches!(stale, Msg::Settle { .. }));
        // The grant expires (counted as spent), the bucket refills, the ledger is forgotten.
        world.now = 8 * SECOND;
        world.shards[owner].sweep_ledgers(world.now);
        assert_eq!(world.shards[owner].owned_len(), 0);
        let burst_start = world.admitted.len();
        for _ in 0..2 {
            world.request(holder);
            world.settle_down();
        }
        world.network.push(stale);
        world.settle_down();
        for shard in [holder, owner] {
            while world.refused == 0 {
                world.request(shard);
                world.settle_down();
                if world.refused == 0 && world.shards[shard].holds_lease(&key(), world.now) {
                    continue;
                }
                if shard == holder {
                    break;
                }
            }
        }
        assert_eq!(world.admitted.len() - burst_start, 10, "one burst at one instant");
    }

    /// More clients than slots: the quiet and the least in debt are forgotten first, a
    /// client whose ledger was forgotten comes back no fuller than it left, and newcomers do
    /// not inherit anyone else's debt.
    #[test]
    fn key_pressure_forgets_no_debt() {
        let quota = Quota::per_second(1, 10);
        let core = |max_keys| -> ShardCore<To> {
            ShardCore::new(Some(0), 1, quotas(1, 10), NonZeroUsize::new(max_keys).unwrap(), ids())
        };
        let mut fx = Vec::new();
        let mut shard = core(2);
        for _ in 0..10 {
            assert!(shard.check(key(), 0, Backend::Local, || To::Request, &mut fx).unwrap().allowed);
        }
        // Strangers, one request each, half a second apart: each takes the slot of the one
        // before (less in debt than the spent client), and each gets a whole bucket.
        for n in 0..16 {
            let now = (n + 1) * SECOND / 2;
            let told = shard.check(stranger(n as usize), now, Backend::Local, || To::Stranger, &mut fx).unwrap();
            assert_eq!((told.allowed, told.remaining), (true, 9), "stranger {n} starts with its own bucket");
            assert!(shard.owned.contains(&key()), "the client in debt keeps its ledger (stranger {n})");
        }
        assert_eq!(shard.owned_len(), 2);
        assert_eq!(shard.owned.peek(&key()).unwrap().ledger.available(quota, 10 * SECOND), 10);
        assert_eq!(shard.stats.evicted, 15);

        // One slot: the spent client is forgotten for a newcomer, which starts full, and
        // comes back as empty as it left.
        let mut shard = core(1);
        for _ in 0..10 {
            shard.check(key(), 0, Backend::Local, || To::Request, &mut fx);
        }
        let newcomer = shard.check(stranger(1), 0, Backend::Local, || To::Stranger, &mut fx).unwrap();
        assert_eq!((newcomer.allowed, newcomer.remaining), (true, 9));
        assert!(!shard.owned.contains(&key()), "forgotten for the newcomer");
        let back = shard.check(key(), SECOND / 2, Backend::Local, || To::Request, &mut fx).unwrap();
        assert!(!back.allowed, "no fresh burst for the client that was forgotten");
        let back = shard.check(key(), SECOND, Backend::Local, || To::Request, &mut fx).unwrap();
        assert_eq!((back.allowed, back.remaining), (true, 0), "one refilled, spent");
        assert!(shard.parked_keys.is_empty());
    }

    /// Every ledger busy (a grant out): a new key is decided on its forgotten debt alone,
    /// with no lease, and repeated decisions of it still hold its bucket.
    #[test]
    fn a_key_that_finds_no_room_is_still_limited() {
        let mut core: ShardCore<To> = ShardCore::new(Some(0), 2, quotas(1, 10), NonZeroUsize::new(1).unwrap(), ids());
        let mine: Vec<BucketKey> = (0..200).map(stranger).filter(|key| owner_of(key, 2) == 0).take(2).collect();
        let mut fx = Vec::new();
        let ask = |key, concurrent| LeaseAsk { key, from: 1, settle: None, want: 4, concurrent };
        assert!(core.on_ask(ask(mine[0], true), 0, || To::Holder(1, mine[0]), &mut fx).unwrap().grant.is_some());
        let mut admitted = 0;
        for _ in 0..20 {
            let answer = core.on_ask(ask(mine[1], true), 0, || To::Holder(1, mine[1]), &mut fx).unwrap();
            assert!(answer.grant.is_none(), "no lease without a ledger");
            admitted += usize::from(answer.allowed);
        }
        assert_eq!(admitted, 10, "one bucket");
        assert_eq!(core.stats.unkept, 20);
    }

    /// A holder whose every entry has a request waiting refuses a new key (429) rather than
    /// forget an entry and drop its waiting requests.
    #[test]
    fn a_holder_refuses_rather_than_drop_waiting_requests() {
        let mut core: ShardCore<To> = ShardCore::new(Some(0), 2, quotas(1, 10), NonZeroUsize::new(2).unwrap(), ids());
        let mut fx = Vec::new();
        let foreign: Vec<BucketKey> = (0..200).map(stranger).filter(|key| owner_of(key, 2) == 1).take(3).collect();
        for key in &foreign[..2] {
            assert!(core.check(*key, 0, Backend::Local, || To::Stranger, &mut fx).is_none(), "waits for its ask");
        }
        let refused = core.check(foreign[2], 0, Backend::Local, || To::Stranger, &mut fx).unwrap();
        assert!(!refused.allowed);
        assert_eq!(core.held_len(), 2);
        assert!(core.held.iter().all(|(_, held)| held.waiting.len() == 1), "nobody waiting was dropped");
    }

    /// With Redis, what Redis admits or leases to a shard is booked on the local owner, so a
    /// fall-back to the local ledgers does not hand the client a fresh burst.
    #[test]
    fn a_fall_back_does_not_start_full() {
        let mut world = World::new(1, 2, quotas(1, 10), Backend::Redis);
        world.in_order = true;
        let mut picks = std::iter::repeat(0);
        for request in 0..10 {
            world.sequential_request(request % 2, &mut picks);
        }
        assert_eq!(world.admitted.len(), 10);
        world.settle_down();
        world.backend = Backend::Local;
        world.quota = quotas(1, 10).default;
        for request in 0..10 {
            world.sequential_request(request % 2, &mut picks);
        }
        assert_eq!(world.admitted.len(), 10, "the local ledger knew the burst was spent");
        assert!(world.told_is_true().is_ok(), "{:?}", world.told);
    }

    #[test]
    fn grants_are_at_most_half_of_what_is_available_and_expire_as_spent() {
        let quota = Quota::per_second(10, 10);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 1, 100, SECOND, 1, false).unwrap();
        assert_eq!(grant.tokens, 5);
        assert_eq!(ledger.available(quota, 0), 5, "leased tokens do not count as available");
        assert_eq!(ledger.available(quota, 10 * SECOND), 5, "nor do they refill while out");
        assert_eq!(ledger.expire(quota, 2 * SECOND), 1);
        assert_eq!(ledger.available(quota, SECOND), 5, "counted as spent when the lease ended");
        assert_eq!(ledger.available(quota, SECOND + 300_000_000), 8, "then they refill");
    }

    #[test]
    fn a_settlement_returns_exactly_the_unspent_tokens_unless_forfeit() {
        let quota = Quota::per_second(1, 10);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 3, 4, SECOND, 7, true).unwrap();
        assert_eq!(grant.tokens, 4);
        assert!(!ledger.settle(quota, 0, 2, Settlement { grant: grant.id, spent: 1 }), "only its holder");
        assert!(ledger.settle(quota, 0, 3, Settlement { grant: grant.id, spent: 1 }));
        assert_eq!(ledger.available(quota, 0), 9);
        assert!(!ledger.settle(quota, 0, 3, Settlement { grant: grant.id, spent: 0 }), "only once");
        let grant = ledger.grant(quota, 0, 3, 4, SECOND, 8, true).unwrap();
        ledger.forfeit_waited_for(0);
        assert!(ledger.settle(quota, 0, 3, Settlement { grant: grant.id, spent: 0 }));
        assert_eq!(ledger.available(quota, 0), 9 - grant.tokens as u64, "a forfeit grant is charged in full");
    }

    #[test]
    fn a_charge_empties_the_bucket_at_most() {
        let quota = Quota::per_second(1, 10);
        let mut ledger = Ledger::default();
        ledger.charge(quota, 0, 3);
        assert_eq!(ledger.available(quota, 0), 7);
        ledger.charge(quota, 0, 100);
        assert_eq!(ledger.available(quota, 0), 0);
        assert_eq!(ledger.available(quota, SECOND), 1, "and refills from empty");
    }

    #[test]
    fn a_refusal_names_a_wait_after_which_a_request_passes() {
        let quota = Quota::per_second(2, 3);
        let mut ledger = Ledger::default();
        let grant = ledger.grant(quota, 0, 1, 1, 10 * SECOND, 1, false).unwrap();
        while ledger.admit(quota, 0) {}
        let refused = ledger.decision(quota, 0, false);
        let wait = u64::try_from(refused.retry_after.as_nanos()).unwrap();
        assert!(ledger.clone().admit(quota, wait), "passes after {wait} ns");
        assert!(!ledger.clone().admit(quota, wait - 1));
        assert!(ledger.settle(quota, 0, 1, Settlement { grant: grant.id, spent: 0 }));
        assert!(ledger.admit(quota, 0), "the returned token passes at once");
    }
}
