//! When an actor that keeps panicking is restarted: the rules of restart intensity (Erlang/
//! OTP's "at most MaxR restarts within MaxT") and backoff (Akka's exponential delay with
//! jitter), on a clock of milliseconds. `actors::supervision` keeps the history and applies
//! them.
//!
//! - **Running**: a restart happens at once, as long as the actor restarted at most
//!   `max_restarts` times within the last `window` (this restart included).
//! - **Backing off**: the restart that goes past that, and every restart after it, waits:
//!   the n-th delayed restart of an episode comes `backoff(n)` after its panic — 1 s
//!   doubling to at most 30 s, less up to half of it at random (jitter, so replicas that
//!   crash together do not restart together).
//! - **Recovered**: once the actor has run a whole `window` since its last delayed
//!   restart without a panic, it is running again. Its earlier restarts are then all
//!   older than the window, so it is allowed `max_restarts` afresh, and the next episode's
//!   delays start again from 1 s.

use std::time::Duration;

/// The first delay of an episode; each delayed restart after it doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest an actor waits to be restarted.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `ACTOR_MAX_RESTARTS` within `ACTOR_RESTART_WINDOW_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        Self { max_restarts: 10, window: Duration::from_secs(60) }
    }
}

impl RestartIntensity {
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether restarts at these times (milliseconds) fall within the window ending at `now`.
    pub fn counts(&self, restarted_at: u64, now: u64) -> bool {
        restarted_at <= now && now - restarted_at < self.window_ms()
    }

    /// Whether a restart, with `in_window` restarts within the window (itself included),
    /// may happen at once.
    pub fn tolerates(&self, in_window: usize) -> bool {
        u32::try_from(in_window).is_ok_and(|count| count <= self.max_restarts)
    }

    /// Whether an actor whose latest delayed restart is (or was) at `restart_at` is still
    /// backing off at `now`: waiting for that restart, or not yet a whole window past it.
    /// `restart_at` 0 means it never backed off.
    pub fn backing_off(&self, restart_at: u64, now: u64) -> bool {
        restart_at != 0 && now < restart_at.saturating_add(self.window_ms())
    }
}

/// The delay of the `nth` delayed restart of an episode (from 1), for a `jitter` drawn
/// uniformly from [0, 1): `FIRST_BACKOFF` doubled `nth - 1` times, capped at
/// `MAX_BACKOFF`, less up to half of it.
pub fn backoff(nth: u32, jitter: f64) -> Duration {
    let doublings = nth.saturating_sub(1).min(16);
    let full = FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTENSITY: RestartIntensity = RestartIntensity { max_restarts: 3, window: Duration::from_secs(10) };

    #[test]
    fn restarts_count_within_the_window_ending_now() {
        assert!(INTENSITY.counts(5_000, 5_000));
        assert!(INTENSITY.counts(1, 10_000));
        assert!(!INTENSITY.counts(0, 10_000), "exactly a window ago is outside it");
        assert!(!INTENSITY.counts(10_001, 10_000), "a later restart is not in a window ending now");
    }

    #[test]
    fn at_most_max_restarts_are_tolerated() {
        assert!(INTENSITY.tolerates(1));
        assert!(INTENSITY.tolerates(3));
        assert!(!INTENSITY.tolerates(4));
        let none = RestartIntensity { max_restarts: 0, ..INTENSITY };
        assert!(!none.tolerates(1), "ACTOR_MAX_RESTARTS=0 delays every restart");
    }

    #[test]
    fn backing_off_lasts_until_a_whole_window_after_the_last_delayed_restart() {
        assert!(!INTENSITY.backing_off(0, 123), "never backed off");
        assert!(INTENSITY.backing_off(5_000, 4_000), "waiting for the restart");
        assert!(INTENSITY.backing_off(5_000, 14_999), "restarted, not yet a whole window without a panic");
        assert!(!INTENSITY.backing_off(5_000, 15_000), "recovered");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty_with_up_to_half_taken_by_jitter() {
        let without_jitter: Vec<u64> = (1..=7).map(|nth| backoff(nth, 0.0).as_millis() as u64).collect();
        assert_eq!(without_jitter, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(backoff(u32::MAX, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(0, 0.0), FIRST_BACKOFF, "the first is the first however it is counted");
        for nth in 1..10 {
            for jitter in [0.0, 0.25, 0.5, 0.999_999, 1.0, -3.0, 7.0] {
                let delay = backoff(nth, jitter);
                assert!(delay <= backoff(nth, 0.0) && delay >= backoff(nth, 0.0) / 2, "{nth} {jitter}: {delay:?}");
            }
        }
    }
}
