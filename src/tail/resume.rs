//! What `storefront tail` does with each thing the server says, as plain values: the
//! position it resumes from (so a reconnect has no gap and no duplicate), and whether a
//! close or a refusal means "reconnect" or "stop" (api.md and the README's "Live updates").

use std::time::Duration;

use serde_json::Value;

/// The `ops` topic describes one replica and its ids are that replica's own sequence: its
/// events are printed but never move the position (nor are they replayed).
const OPS: &str = "ops";

/// Where the stream stands: the id of the last outbox event printed, or, before the first
/// one, where the live stream started. A reconnect subscribes with `since` = this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    last: Option<i64>,
}

/// What to do with one `event` message.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Print,
    /// At or before the position: already printed (a server that breaks the protocol).
    Duplicate {
        id: i64,
        last: i64,
    },
    /// No numeric `id` or no `topic`: not an event of this protocol.
    Malformed,
}

impl Position {
    pub fn after(since: Option<i64>) -> Self {
        Self { last: since }
    }

    /// The `since` of the next subscription; `None` before anything is known (from now).
    pub fn since(self) -> Option<i64> {
        self.last
    }

    /// A `subscribed` answer: without a position yet, the live stream starts after its
    /// `last_event_id`, so a reconnect before the first event resumes there, not from "now".
    pub fn subscribed(&mut self, answer: &Value) {
        if self.last.is_none() {
            self.last = answer["last_event_id"].as_i64();
        }
    }

    pub fn event(&mut self, event: &Value) -> Event {
        let (Some(id), Some(topic)) = (event["id"].as_i64(), event["topic"].as_str()) else {
            return Event::Malformed;
        };
        if topic == OPS {
            return Event::Print;
        }
        match self.last {
            Some(last) if id <= last => Event::Duplicate { id, last },
            _ => {
                self.last = Some(id);
                Event::Print
            }
        }
    }
}

/// After a connection ended, or could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Resume with `since` after a backoff; `why` is said on stderr.
    Reconnect { why: String },
    /// Reconnecting cannot help; `why` says what the user must do.
    Stop { why: String },
}

fn reconnect(why: impl Into<String>) -> Next {
    Next::Reconnect { why: why.into() }
}

fn stop(why: impl Into<String>) -> Next {
    Next::Stop { why: why.into() }
}

/// A close frame from the server.
pub fn closed(code: u16, reason: &str) -> Next {
    let said = if reason.is_empty() { format!("close {code}") } else { format!("close {code} {reason:?}") };
    match (code, reason) {
        (1001, _) => reconnect(format!("the server is shutting down ({said})")),
        (1008, "token expired") => {
            stop(format!("the token expired ({said}): get a new one (sign in again) and start tail with it"))
        }
        (1008, "token revoked") => stop(format!(
            "the token was revoked ({said}), by a password or role change: sign in again and start tail with the new token"
        )),
        (1008, "user deleted") => stop(format!("the user was deleted ({said})")),
        // Nothing is lost: the replay from `since` brings back what the queue dropped.
        (1008, "slow consumer") => reconnect(format!("this client fell behind ({said})")),
        (1008, "rate limited") => reconnect(format!("the server is limiting this client ({said})")),
        (1008, _) => stop(format!("the server refused this client ({said})")),
        // What tail sent was refused: sending it again would be refused again.
        (1002 | 1003 | 1007 | 1009, _) => {
            stop(format!("the server rejected what tail sent ({said}): a bug in tail, or a server of another version"))
        }
        // 1011: the replay could not be read (database unavailable); 1000, 1012, 1013 and
        // anything unknown: nothing says it would fail again.
        _ => reconnect(format!("the server closed the connection ({said})")),
    }
}

/// An answer other than `101 Switching Protocols` to the upgrade request.
pub fn refused(status: u16, detail: Option<&str>) -> Next {
    let said = detail.map_or_else(|| format!("HTTP {status}"), |detail| format!("HTTP {status}: {detail}"));
    match status {
        401 => stop(format!(
            "the server refused the token ({said}). It has expired or is not valid for this server: \
             get a new one (sign in again) and start tail with it"
        )),
        403 => stop(format!("the server refused the connection ({said})")),
        404 => stop(format!("no live-updates endpoint at this URL ({said}); check --url")),
        // Too many connections for this user or address, a full replica, a proxy in trouble.
        429 | 500..=599 => reconnect(format!("the server did not take the connection ({said})")),
        _ => stop(format!("the server refused the connection ({said})")),
    }
}

/// Exponential backoff with jitter, capped; reset once a connection works again.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The wait before the next attempt: between half and all of the current step (so
    /// clients of a restarted replica do not all come back at once); the step doubles.
    /// `jitter` is a uniform draw from [0, 1).
    pub fn delay(&mut self, jitter: f64) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(Self::CAP);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(id: i64, topic: &str) -> Value {
        json!({"type": "event", "id": id, "topic": topic, "kind": "x", "data": {}, "at": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn the_position_is_the_last_event_printed_and_nothing_is_printed_twice() {
        let mut position = Position::after(None);
        position.subscribed(&json!({"type": "subscribed", "topics": ["products"], "last_event_id": 7}));
        assert_eq!(position.since(), Some(7), "before any event: where the live stream started");
        assert_eq!(position.event(&event(8, "products")), Event::Print);
        assert_eq!(position.event(&event(11, "orders")), Event::Print);
        assert_eq!(position.event(&event(11, "orders")), Event::Duplicate { id: 11, last: 11 });
        assert_eq!(position.event(&event(9, "products")), Event::Duplicate { id: 9, last: 11 });
        position.subscribed(&json!({"type": "subscribed", "last_event_id": 40}));
        assert_eq!(position.since(), Some(11), "a later subscription does not skip what was not printed");
    }

    #[test]
    fn ops_events_are_printed_but_do_not_move_the_position() {
        let mut position = Position::after(Some(5));
        assert_eq!(position.event(&event(900, "ops")), Event::Print);
        assert_eq!(position.event(&event(1, "ops")), Event::Print);
        assert_eq!(position.since(), Some(5));
        assert_eq!(position.event(&json!({"type": "event", "id": "6", "topic": "products"})), Event::Malformed);
    }

    #[test]
    fn a_given_since_is_where_it_resumes_until_an_event_is_printed() {
        let mut position = Position::after(Some(3));
        position.subscribed(&json!({"type": "subscribed", "last_event_id": 50}));
        assert_eq!(position.since(), Some(3), "the replay from 3 has not been printed yet");
    }

    fn is_reconnect(next: &Next) -> bool {
        matches!(next, Next::Reconnect { .. })
    }

    #[test]
    fn closes_that_a_reconnect_cures_and_closes_that_it_cannot() {
        for (code, reason) in [
            (1001, "server shutting down"),
            (1008, "slow consumer"),
            (1008, "rate limited"),
            (1011, "replay unavailable; reconnect with since"),
            (1000, ""),
            (1006, ""),
        ] {
            assert!(is_reconnect(&closed(code, reason)), "{code} {reason}");
        }
        for (code, reason) in [
            (1008, "token expired"),
            (1008, "token revoked"),
            (1008, "user deleted"),
            (1008, "something new"),
            (1003, "binary frames are not supported"),
            (1009, "frame larger than 4 KiB"),
        ] {
            assert!(!is_reconnect(&closed(code, reason)), "{code} {reason}");
        }
        let Next::Stop { why } = closed(1008, "token expired") else { unreachable!() };
        assert!(why.contains("get a new one"), "{why}");
    }

    #[test]
    fn refusals_before_the_upgrade() {
        let Next::Stop { why } = refused(401, Some("Bearer token expired")) else { panic!("401 stops") };
        assert!(why.contains("get a new one") && why.contains("Bearer token expired"), "{why}");
        assert!(!is_reconnect(&refused(403, None)));
        assert!(!is_reconnect(&refused(404, None)));
        for status in [429, 502, 503] {
            assert!(is_reconnect(&refused(status, None)), "{status}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new();
        let steps: Vec<Duration> = (0..8).map(|_| backoff.delay(1.0)).collect();
        assert_eq!(steps[0], Backoff::FIRST);
        assert!(steps.windows(2).all(|pair| pair[1] == (pair[0] * 2).min(Backoff::CAP)), "{steps:?}");
        assert_eq!(*steps.last().unwrap(), Backoff::CAP);
        assert_eq!(backoff.delay(0.0), Backoff::CAP / 2, "jitter takes off at most half");
        backoff.reset();
        assert_eq!(backoff.delay(0.0), Backoff::FIRST / 2);
    }
}
