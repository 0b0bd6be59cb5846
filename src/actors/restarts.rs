//! Each actor's restart history, shared by all its instances (shards, pool threads) and
//! read without a lock by whoever needs it: whether a restart may happen at once or backs
//! off (the rules are `domain::restart_intensity`), until when, and a crash loop an
//! operator injected. The panicking instance decides its own restart from it; callers ask
//! it whether the actor is down before they send, so they fail fast or take their
//! fallback instead of waiting on a mailbox; the Health actor and the actors API read it.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rand::RngExt;

use super::{
    names,
    report::{SupervisionReport, SupervisionState},
};
use crate::domain::restart_intensity::{backoff, RestartIntensity};

/// Restarts kept beyond the `max_restarts + 1` a decision needs, so that the count shown
/// while an actor backs off (when its restarts come at least half a second apart) is exact.
const EXTRA_HISTORY: usize = 32;

/// How a panicked actor restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// At once: within the restart intensity.
    Now,
    /// After `delay`: past it, or already backing off.
    After(Duration),
}

pub struct ActorRestarts {
    name: &'static str,
    intensity: RestartIntensity,
    epoch: Instant,
    /// The latest restarts, in milliseconds since `epoch` plus one (0 marks a free slot);
    /// `cursor` counts every restart ever recorded.
    recent: Box<[AtomicU64]>,
    cursor: AtomicUsize,
    /// When the latest delayed restart happens or happened, on the same clock (0: the
    /// actor never backed off).
    restart_at: AtomicU64,
    /// Delayed restarts in the current episode of backing off.
    backoffs: AtomicU32,
    /// An operator's fault injection: until then every message the actor handles panics.
    crash_loop_until: AtomicU64,
}

impl ActorRestarts {
    fn new(name: &'static str, intensity: RestartIntensity, epoch: Instant) -> Self {
        let history = usize::try_from(intensity.max_restarts).unwrap_or(usize::MAX).saturating_add(1 + EXTRA_HISTORY);
        Self {
            name,
            intensity,
            epoch,
            recent: (0..history).map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicUsize::new(0),
            restart_at: AtomicU64::new(0),
            backoffs: AtomicU32::new(0),
            crash_loop_until: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn intensity(&self) -> RestartIntensity {
        self.intensity
    }

    /// Milliseconds since the epoch, plus one so that no time is 0.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Records a restart now and decides when it happens.
    pub fn record(&self) -> Restart {
        self.record_at(self.now(), rand::rng().random::<f64>())
    }

    /// `record` at `now` with a `jitter` in [0, 1) (see `domain::restart_intensity::backoff`).
    fn record_at(&self, now: u64, jitter: f64) -> Restart {
        let slot = self.cursor.fetch_add(1, Ordering::AcqRel) % self.recent.len();
        self.recent[slot].store(now, Ordering::Release);
        let nth = if self.intensity.backing_off(self.restart_at.load(Ordering::Acquire), now) {
            self.backoffs.fetch_add(1, Ordering::AcqRel) + 1
        } else if self.intensity.tolerates(self.in_window(now)) {
            return Restart::Now;
        } else {
            // A new episode: its delays start again from the first.
            self.backoffs.store(1, Ordering::Release);
            1
        };
        let delay = backoff(nth, jitter);
        let wanted = now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        // Of instances panicking together, every one restarts at the latest time any chose.
        let at = self.restart_at.fetch_max(wanted, Ordering::AcqRel).max(wanted);
        Restart::After(Duration::from_millis(at - now))
    }

    /// Restarts within the window ending at `now`.
    fn in_window(&self, now: u64) -> usize {
        let recorded = self.recent.iter().map(|slot| slot.load(Ordering::Acquire)).filter(|at| *at != 0);
        recorded.filter(|at| self.intensity.counts(*at, now)).count()
    }

    /// How long until the latest delayed restart; zero once it is past.
    pub fn until_restart(&self) -> Duration {
        match self.restart_at.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            at => Duration::from_millis(at.saturating_sub(self.now())),
        }
    }

    /// A delayed restart is pending: the actor does no work until it happens. One atomic
    /// load for an actor that never backed off.
    pub fn is_down(&self) -> bool {
        self.restart_at.load(Ordering::Relaxed) != 0 && !self.until_restart().is_zero()
    }

    /// Whole seconds until the pending restart, at least one: a `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        self.until_restart().as_secs_f64().ceil().max(1.0) as u64
    }

    /// Identifies the latest delayed restart: it changes with each one.
    pub fn backoff_mark(&self) -> u64 {
        self.restart_at.load(Ordering::Acquire)
    }

    /// Restarts too often: from the restart past the intensity until a whole window after
    /// the last delayed restart.
    pub fn is_backing_off(&self) -> bool {
        self.intensity.backing_off(self.restart_at.load(Ordering::Acquire), self.now())
    }

    /// The `supervision` object of the actor's row in `GET /api/v1/ops/actors`.
    pub fn report(&self) -> SupervisionReport {
        let now = self.now();
        let at = self.restart_at.load(Ordering::Acquire);
        let backing_off = self.intensity.backing_off(at, now);
        let next_restart_at = (backing_off && now < at).then(|| wall_clock_in(Duration::from_millis(at - now)));
        SupervisionReport {
            state: if backing_off { SupervisionState::BackingOff } else { SupervisionState::Running },
            restarts_in_window: u32::try_from(self.in_window(now)).unwrap_or(u32::MAX),
            max_restarts: self.intensity.max_restarts,
            window_seconds: self.intensity.window.as_secs(),
            next_restart_at,
        }
    }

    /// Fault injection: every message the actor handles panics for `duration`.
    pub fn crash_loop_for(&self, duration: Duration) {
        let until = self.now().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.crash_loop_until.store(until, Ordering::Release);
    }

    /// Ends an injected crash loop.
    pub fn end_crash_loop(&self) {
        self.crash_loop_until.store(0, Ordering::Release);
    }

    /// One atomic load unless a crash loop was injected.
    pub fn crash_looping(&self) -> bool {
        match self.crash_loop_until.load(Ordering::Relaxed) {
            0 => false,
            until => self.now() < until,
        }
    }
}

fn wall_clock_in(delay: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
}

/// Every supervised actor's restart history, by name (`names::ALL`), on one clock.
#[derive(Clone)]
pub struct RestartRegistry {
    actors: Arc<[Arc<ActorRestarts>]>,
}

impl RestartRegistry {
    pub fn new(intensity: RestartIntensity) -> Self {
        let epoch = Instant::now();
        Self { actors: names::ALL.iter().map(|name| Arc::new(ActorRestarts::new(name, intensity, epoch))).collect() }
    }

    pub fn find(&self, name: &str) -> Option<&Arc<ActorRestarts>> {
        self.actors.iter().find(|actor| actor.name == name)
    }

    /// The history of `name`. An actor missing from `names::ALL` still gets one (kept
    /// by its instances alone), but no row, check or event reads it.
    pub fn of(&self, name: &'static str) -> Arc<ActorRestarts> {
        self.find(name).cloned().unwrap_or_else(|| {
            tracing::warn!(actor = name, "actor missing from names::ALL: its backoff is not reported");
            let intensity = self.actors.first().map_or_else(RestartIntensity::default, |actor| actor.intensity);
            Arc::new(ActorRestarts::new(name, intensity, Instant::now()))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ActorRestarts>> {
        self.actors.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(max_restarts: u32, window_secs: u64) -> ActorRestarts {
        let intensity = RestartIntensity { max_restarts, window: Duration::from_secs(window_secs) };
        ActorRestarts::new("cache", intensity, Instant::now())
    }

    fn after_ms(restart: Restart) -> u64 {
        match restart {
            Restart::Now => 0,
            Restart::After(delay) => delay.as_millis() as u64,
        }
    }

    #[test]
    fn restarts_within_the_intensity_are_immediate_and_the_next_one_waits() {
        let restarts = history(3, 10);
        for at in [1_000, 2_000, 3_000] {
            assert_eq!(restarts.record_at(at, 0.0), Restart::Now);
        }
        assert_eq!(restarts.record_at(4_000, 0.0), Restart::After(Duration::from_secs(1)), "the fourth in 10 s");
        assert!(restarts.intensity.backing_off(restarts.restart_at.load(Ordering::Acquire), 4_500));
    }

    #[test]
    fn a_fresh_history_counts_no_restart() {
        assert_eq!(history(3, 10).in_window(1), 0, "free slots are not restarts, even at the start of the clock");
    }

    #[test]
    fn restarts_older_than_the_window_do_not_count() {
        let restarts = history(2, 10);
        assert_eq!(restarts.record_at(1_000, 0.0), Restart::Now);
        assert_eq!(restarts.record_at(2_000, 0.0), Restart::Now);
        assert_eq!(restarts.record_at(11_000, 0.0), Restart::Now, "the first fell out of the window");
        assert_eq!(restarts.in_window(11_000), 2);
        assert_ne!(restarts.record_at(11_500, 0.0), Restart::Now);
    }

    #[test]
    fn every_panic_while_backing_off_waits_twice_as_long_until_a_clean_window() {
        let restarts = history(1, 10);
        assert_eq!(restarts.record_at(1_000, 0.0), Restart::Now);
        assert_eq!(after_ms(restarts.record_at(1_100, 0.0)), 1_000);
        // Restarted at 2_100; panics again on probation: 2 s, then 4 s.
        assert_eq!(after_ms(restarts.record_at(3_000, 0.0)), 2_000);
        assert_eq!(after_ms(restarts.record_at(5_500, 0.0)), 4_000);
        // Its window ran clean from the restart at 9_500: recovered at 19_500, counted afresh.
        assert!(restarts.intensity.backing_off(restarts.restart_at.load(Ordering::Acquire), 19_499));
        assert!(!restarts.intensity.backing_off(restarts.restart_at.load(Ordering::Acquire), 19_500));
        assert_eq!(restarts.in_window(19_500), 0, "every earlier restart is older than the window");
        assert_eq!(restarts.record_at(20_000, 0.0), Restart::Now);
        assert_eq!(after_ms(restarts.record_at(20_100, 0.0)), 1_000, "a new episode starts from the first delay");
    }

    #[test]
    fn instances_panicking_together_restart_at_the_latest_time_chosen() {
        let restarts = history(0, 10);
        assert_eq!(after_ms(restarts.record_at(1_000, 0.0)), 1_000);
        // A second instance panics in the same episode: 2 s, and the first waits with it.
        assert_eq!(after_ms(restarts.record_at(1_000, 0.0)), 2_000);
        assert_eq!(restarts.restart_at.load(Ordering::Acquire), 3_000);
    }

    #[test]
    fn a_crash_loop_lasts_until_it_ends_or_is_ended() {
        let restarts = history(10, 60);
        assert!(!restarts.crash_looping());
        restarts.crash_loop_for(Duration::from_secs(60));
        assert!(restarts.crash_looping());
        restarts.end_crash_loop();
        assert!(!restarts.crash_looping());
        restarts.crash_loop_for(Duration::ZERO);
        assert!(!restarts.crash_looping());
    }

    #[test]
    fn the_report_says_backing_off_until_a_window_after_the_last_delayed_restart() {
        let restarts = history(0, 60);
        let report = restarts.report();
        assert_eq!(
            (report.state, report.restarts_in_window, report.next_restart_at),
            (SupervisionState::Running, 0, None)
        );
        assert!(matches!(restarts.record(), Restart::After(_)));
        let report = restarts.report();
        assert_eq!(report.state, SupervisionState::BackingOff);
        assert_eq!(report.restarts_in_window, 1);
        assert!(report.next_restart_at.is_some_and(|at| at > Utc::now()), "{report:?}");
        assert!(restarts.is_down() && restarts.retry_after_secs() >= 1);
    }
}
