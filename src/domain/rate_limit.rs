//! GCRA (the generic cell rate algorithm) in integer nanoseconds. A bucket is one number,
//! its theoretical arrival time (TAT); a request is admitted when the TAT is no more than
//! the burst tolerance ahead of now. Over any window of length `e` at most
//! `burst + rate × e` requests are admitted. How one client's bucket is shared by many
//! deciders (HTTP workers, replicas) without multiplying it is `rate_lease`.

use std::{net::IpAddr, time::Duration};

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Default,
    Auth,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Auth => "auth",
        }
    }
}

/// Whose bucket a request draws from: the user behind a valid token, else the client
/// address. A plain value, so deciding a request copies it instead of allocating a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(Uuid),
    Ip(IpAddr),
    /// No peer address (not seen over TCP): all such requests share one bucket.
    UnknownIp,
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Ip(ip) => write!(f, "ip:{ip}"),
            Self::UnknownIp => f.write_str("ip:unknown"),
        }
    }
}

/// One bucket: a policy and a client.
pub type BucketKey = (Policy, ClientKey);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub default: Quota,
    pub auth: Quota,
}

impl Quotas {
    pub fn of(&self, policy: Policy) -> Quota {
        match policy {
            Policy::Default => self.default,
            Policy::Auth => self.auth,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
    /// One request's worth of time: 1 / rate.
    pub interval_ns: u64,
}

impl Quota {
    /// The interval is rounded up to a whole nanosecond, so the rate enforced is never
    /// above the one configured (at most one part in 10^9 / rate below it).
    pub fn per_second(rate: u32, burst: u32) -> Self {
        Self { burst: burst.max(1), interval_ns: 1_000_000_000_u64.div_ceil(u64::from(rate.max(1))) }
    }

    pub fn per_minute(count: u32) -> Self {
        let count = count.max(1);
        Self { burst: count, interval_ns: 60_000_000_000_u64.div_ceil(u64::from(count)) }
    }

    /// The same quota with its interval rounded up to a whole microsecond, the unit the
    /// Redis ledger counts in (a rate above 1,000/s may be enforced slightly below its
    /// setting there, never above it).
    pub fn in_whole_micros(self) -> Self {
        Self { interval_ns: self.interval_ns.div_ceil(1_000).saturating_mul(1_000), ..self }
    }

    /// All of the burst, in nanoseconds of debt.
    pub fn capacity_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }

    /// The window in which `burst` requests refill, as the RateLimit-Policy `w`.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.saturating_mul(u64::from(self.burst)))
    }

    fn tolerance_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst - 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket's TAT after this request (unchanged when refused).
    pub tat_ns: u64,
    /// Requests that could still pass right now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// Until the next request can pass (zero when allowed).
    pub retry_after: Duration,
}

/// Decides one request at `now_ns` for a bucket whose TAT is `tat_ns` (None: a new bucket).
pub fn check(quota: Quota, tat_ns: Option<u64>, now_ns: u64) -> Decision {
    let tat = tat_ns.unwrap_or(now_ns).max(now_ns);
    let ahead = tat - now_ns;
    if ahead > quota.tolerance_ns() {
        return Decision {
            allowed: false,
            tat_ns: tat,
            remaining: 0,
            reset_after: Duration::from_nanos(ahead),
            retry_after: Duration::from_nanos(ahead - quota.tolerance_ns()),
        };
    }
    let new_tat = tat.saturating_add(quota.interval_ns);
    let debt = new_tat - now_ns;
    let capacity = quota.interval_ns.saturating_mul(u64::from(quota.burst));
    let remaining = u32::try_from(capacity.saturating_sub(debt) / quota.interval_ns).unwrap_or(u32::MAX);
    Decision {
        allowed: true,
        tat_ns: new_tat,
        remaining,
        reset_after: Duration::from_nanos(debt),
        retry_after: Duration::ZERO,
    }
}

/// How many requests may pass unchecked while the rate limiter does not answer, across
/// all clients of one replica: a burst of `FAIL_OPEN_BURST`, then `FAIL_OPEN_PER_SECOND`.
/// Past that, requests are refused with 503 until the limiter is back.
pub const FAIL_OPEN_BURST: u32 = 20;
pub const FAIL_OPEN_PER_SECOND: u32 = 10;

/// The fail-open allowance: one GCRA bucket in an atomic (compare-and-swap on its TAT),
/// shared by every worker without a lock.
#[derive(Debug)]
pub struct FailOpenBudget {
    quota: Quota,
    tat_ns: std::sync::atomic::AtomicU64,
}

impl Default for FailOpenBudget {
    fn default() -> Self {
        Self::new(Quota::per_second(FAIL_OPEN_PER_SECOND, FAIL_OPEN_BURST))
    }
}

impl FailOpenBudget {
    pub fn new(quota: Quota) -> Self {
        Self { quota, tat_ns: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Whether one more unchecked request may pass at `now_ns` (a monotonic clock).
    pub fn try_admit(&self, now_ns: u64) -> bool {
        use std::sync::atomic::Ordering;
        let mut current = self.tat_ns.load(Ordering::Acquire);
        loop {
            let decision = check(self.quota, Some(current), now_ns);
            if !decision.allowed {
                return false;
            }
            match self.tat_ns.compare_exchange_weak(current, decision.tat_ns, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Whole seconds, rounded up, at least 1: what `Retry-After` and `t=` carry.
pub fn whole_seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_fresh_bucket_admits_the_burst_then_refuses() {
        let quota = Quota::per_second(5, 10);
        let mut tat = None;
        for expected_remaining in (0..10).rev() {
            let decision = check(quota, tat, 0);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            tat = Some(decision.tat_ns);
        }
        let refused = check(quota, tat, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert_eq!(whole_seconds_up(refused.retry_after), 1);
        assert!(check(quota, tat, 200_000_000).allowed, "one interval later one more passes");
    }

    #[test]
    fn windows_describe_the_refill_time() {
        assert_eq!(Quota::per_second(20, 40).window(), Duration::from_secs(2));
        assert_eq!(Quota::per_minute(10).window(), Duration::from_secs(60));
    }

    #[test]
    fn fail_open_admits_its_burst_then_its_rate_even_from_many_threads() {
        let budget = std::sync::Arc::new(FailOpenBudget::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..100).filter(|_| budget.try_admit(0)).count())
            })
            .collect();
        let at_once: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(at_once, FAIL_OPEN_BURST as usize);
        let second_later = (0..100).filter(|_| budget.try_admit(1_000_000_000)).count();
        assert_eq!(second_later, FAIL_OPEN_PER_SECOND as usize);
    }

    proptest! {
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_elapsed(
            rate in 1..200_u32,
            burst in 1..50_u32,
            gaps in proptest::collection::vec(0..50_000_000_u64, 1..400),
        ) {
            let quota = Quota::per_second(rate, burst);
            let (mut now, mut tat, mut admitted) = (0_u64, None, 0_u64);
            for gap in gaps {
                now += gap;
                let decision = check(quota, tat, now);
                if decision.allowed {
                    admitted += 1;
                    tat = Some(decision.tat_ns);
                }
                let bound = u64::from(burst) as f64 + f64::from(rate) * now as f64 / 1e9;
                prop_assert!(admitted as f64 <= bound + 1e-9, "admitted {} > bound {}", admitted, bound);
            }
        }

        #[test]
        fn refusals_name_a_wait_after_which_a_request_passes(rate in 1..200_u32, burst in 1..50_u32, n in 1..200_usize) {
            let quota = Quota::per_second(rate, burst);
            let mut tat = None;
            for _ in 0..n {
                let decision = check(quota, tat, 0);
                if !decision.allowed {
                    prop_assert!(check(quota, tat, decision.retry_after.as_nanos() as u64).allowed);
                    break;
                }
                tat = Some(decision.tat_ns);
            }
        }
    }
}
