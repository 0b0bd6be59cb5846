//! The Redis side of the rate limiter: every replica's shards are holders of leases on one
//! ledger per client, kept in Redis and changed only by `ledger.lua` (the pure
//! `Ledger::serve`, run atomically where every replica sees it). A call happens when a
//! shard's lease is used up or given back, never per request while tokens last.

use std::time::Duration;

use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Client, Script};

use crate::domain::{
    rate_lease::{Grant, LeaseAnswer, LeaseAsk, Nanos, OwnerView, Settlement, LEASE_MAX_TOKENS, MAX_GRANTS_PER_KEY},
    rate_limit::{BucketKey, Quota},
};

const KEY_PREFIX: &str = "storefront:ratelimit:v1";
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call did not give an answer: the replica falls back to its own limiter.
#[derive(Debug, derive_more::Display)]
pub enum RedisFailure {
    #[display("no answer within {_0:?}")]
    Timeout(Duration),
    #[display("{_0}")]
    Redis(redis::RedisError),
    #[display("unexpected answer from the ledger script: {_0}")]
    Malformed(String),
}

/// One shard's connection to the shared ledgers. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisLedgers {
    connection: ConnectionManager,
    script: Script,
    /// This shard as a holder: the replica and the slot, unique in the cluster.
    holder: String,
    timeout: Duration,
}

impl RedisLedgers {
    /// A connection made lazily on first use and remade after a failure (the redis crate's
    /// ConnectionManager), each attempt and answer bounded by `timeout`. Must run inside
    /// the shard's runtime (its arbiter), which then drives the connection.
    pub fn connect(url: &str, holder: String, timeout: Duration) -> Result<Self, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(Client::open(url)?, config)?;
        Ok(Self { connection, script: Script::new(include_str!("ledger.lua")), holder, timeout })
    }

    /// Settles `ask.settle`, decides one request when `decide`, and leases up to
    /// `ask.want` tokens. `sent_at` is this replica's clock before the call: a grant's
    /// expiry and the view are measured from it, so they are never later than Redis's.
    pub async fn serve(
        mut self,
        quota: Quota,
        ask: LeaseAsk,
        decide: bool,
        ttl: Nanos,
        sent_at: Nanos,
    ) -> Result<LeaseAnswer, RedisFailure> {
        let (allowed, grant_id, tokens, ttl_us, tat_ahead_us, outstanding, retry_us) =
            self.run(bucket(&ask.key), quota, ask.settle, decide, ask.want, ttl).await?;
        let micros = |value: i64| u64::try_from(value).unwrap_or(0).saturating_mul(1_000);
        let grant = if grant_id.is_empty() {
            None
        } else {
            let id = grant_id.parse().map_err(|_| RedisFailure::Malformed(format!("grant id {grant_id:?}")))?;
            let tokens = u32::try_from(tokens).map_err(|_| RedisFailure::Malformed(format!("{tokens} tokens")))?;
            Some(Grant { id, tokens, expires_at: sent_at.saturating_add(micros(ttl_us)) })
        };
        Ok(LeaseAnswer {
            allowed: allowed == 1,
            grant,
            view: OwnerView {
                tat: sent_at.saturating_add(micros(tat_ahead_us)),
                outstanding: u64::try_from(outstanding).unwrap_or(0),
                retry_at: sent_at.saturating_add(micros(retry_us)),
            },
        })
    }

    /// One run of the ledger script on `bucket`, bounded by the timeout.
    async fn run(
        &mut self,
        bucket: String,
        quota: Quota,
        settle: Option<Settlement>,
        decide: bool,
        want: u32,
        ttl: Nanos,
    ) -> Result<LedgerReply, RedisFailure> {
        let interval_us = quota.interval_ns.div_ceil(1_000);
        let (settle_grant, settle_spent) = match settle {
            Some(Settlement { grant, spent }) => (grant.to_string(), spent),
            None => (String::new(), 0),
        };
        let mut invocation = self.script.key(bucket);
        invocation
            .arg(interval_us)
            .arg(quota.burst)
            .arg(&self.holder)
            .arg(settle_grant)
            .arg(settle_spent)
            .arg(u8::from(decide))
            .arg(want)
            .arg(ttl / 1_000)
            .arg(MAX_GRANTS_PER_KEY)
            .arg(LEASE_MAX_TOKENS);
        let call = invocation.invoke_async::<LedgerReply>(&mut self.connection);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisFailure::Timeout(self.timeout))?
            .map_err(RedisFailure::Redis)
    }

    /// Connects and loads the script, so the first request that needs Redis pays neither.
    /// No request waits on it, so it may take longer than a request's call.
    pub async fn warm_up(mut self) -> Result<(), RedisFailure> {
        let allowed = self.timeout.max(WARM_UP_TIMEOUT);
        let load = self.script.load_async(&mut self.connection);
        tokio::time::timeout(allowed, load)
            .await
            .map_err(|_| RedisFailure::Timeout(allowed))?
            .map(drop)
            .map_err(RedisFailure::Redis)
    }

    /// Whether Redis can run the ledger script (within the timeout): one decision on a
    /// bucket of its own (no client's tokens), which reads, writes and sets an expiry as a
    /// real call does. A Redis that answers `PING` but cannot do that (a read-only replica
    /// after a failover, an ACL that forbids the script or the keys, out of memory) fails it.
    pub async fn probe(mut self) -> Result<(), RedisFailure> {
        let probe = Quota { burst: 1, interval_ns: 1_000 };
        self.run(format!("{KEY_PREFIX}:probe"), probe, None, true, 0, 0).await.map(drop)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// What the ledger script returns: allowed, grant id, grant tokens, its ttl, how far the
/// TAT is ahead, tokens on lease, and the wait before one more request could pass.
type LedgerReply = (i64, String, i64, i64, i64, i64, i64);

/// The Redis key of one bucket, e.g. `storefront:ratelimit:v1:default:ip:192.0.2.7`.
fn bucket(key: &BucketKey) -> String {
    format!("{KEY_PREFIX}:{}:{}", key.0.name(), key.1)
}
