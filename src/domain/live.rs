//! Live updates: the topics a subscriber can ask for and who may see what on them. Pure
//! rules; the EventHub and the WebSocket sessions apply them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::user::{Permission, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Public: product.created/updated/deleted, stock changes included.
    Products,
    /// The caller's own orders; every order for a role that may see all orders.
    Orders,
    /// The caller's own balance.
    Account,
    /// Operators only: actor restarts, readiness and breaker changes of this replica.
    Ops,
}

impl Topic {
    pub const ALL: [Topic; 4] = [Topic::Products, Topic::Orders, Topic::Account, Topic::Ops];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|topic| topic.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Orders => "orders",
            Self::Account => "account",
            Self::Ops => "ops",
        }
    }

    /// Ops events describe this process and are not in the outbox, so they cannot be
    /// replayed; every other topic is.
    pub fn is_replayable(self) -> bool {
        self != Self::Ops
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A small set of topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicSet(u8);

impl TopicSet {
    pub fn contains(self, topic: Topic) -> bool {
        self.0 & topic.bit() != 0
    }

    pub fn insert(&mut self, topic: Topic) {
        self.0 |= topic.bit();
    }

    pub fn remove(&mut self, topic: Topic) {
        self.0 &= !topic.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Topic> {
        Topic::ALL.into_iter().filter(move |topic| self.contains(*topic))
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Topic::name).collect()
    }
}

impl FromIterator<Topic> for TopicSet {
    fn from_iter<I: IntoIterator<Item = Topic>>(topics: I) -> Self {
        let mut set = Self::default();
        for topic in topics {
            set.insert(topic);
        }
        set
    }
}

/// Who is watching. The role is the user's current one, looked up when the connection
/// opened and again whenever the user changes, never the one a token once claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    Anonymous,
    User { id: Uuid, role: Role },
}

impl Viewer {
    pub fn user_id(self) -> Option<Uuid> {
        match self {
            Self::Anonymous => None,
            Self::User { id, .. } => Some(id),
        }
    }

    fn can(self, permission: Permission) -> bool {
        matches!(self, Self::User { role, .. } if role.can(permission))
    }

    pub fn may_subscribe(self, topic: Topic) -> bool {
        match topic {
            Topic::Products => true,
            Topic::Orders | Topic::Account => self.user_id().is_some(),
            Topic::Ops => self.can(Permission::SeeOpsTopic),
        }
    }

    /// Whether an event on `topic` that belongs to `owner` (none for public events) is
    /// this viewer's to see. Others' orders and balances stay invisible, as over HTTP.
    pub fn sees(self, topic: Topic, owner: Option<Uuid>) -> bool {
        let own = owner.is_some() && owner == self.user_id();
        match topic {
            Topic::Products => true,
            Topic::Orders => own || self.can(Permission::SeeAllOrders),
            Topic::Account => own,
            Topic::Ops => self.can(Permission::SeeOpsTopic),
        }
    }
}

/// What a subscriber asked for, once parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe { topics: Vec<Topic>, since: Option<i64> },
    Unsubscribe { topics: Vec<Topic> },
}

/// The message is not one the protocol knows: the text of a `bad_request` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCommand(pub String);

#[derive(Deserialize)]
struct RawCommand {
    op: String,
    topics: Option<Vec<String>>,
    since: Option<i64>,
}

/// Parses `{"op":"subscribe","topics":[...],"since":N}` or `{"op":"unsubscribe",...}`.
pub fn parse_command(text: &str) -> Result<Command, BadCommand> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|error| {
        BadCommand(if error.is_syntax() || error.is_eof() {
            "The message is not valid JSON.".to_owned()
        } else {
            "Expected {\"op\": \"subscribe\"|\"unsubscribe\", \"topics\": [names], \"since\": event id}.".to_owned()
        })
    })?;
    let names = raw.topics.ok_or_else(|| BadCommand("\"topics\" must list at least one topic.".into()))?;
    if names.is_empty() {
        return Err(BadCommand("\"topics\" must list at least one topic.".into()));
    }
    let topics = names
        .iter()
        .map(|name| {
            Topic::parse(name).ok_or_else(|| {
                BadCommand(format!("Unknown topic {name:?}; topics are products, orders, account and ops."))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match raw.op.as_str() {
        "subscribe" => {
            if raw.since.is_some_and(|since| since < 0) {
                return Err(BadCommand("\"since\" must be an event id (0 or more).".into()));
            }
            Ok(Command::Subscribe { topics, since: raw.since })
        }
        "unsubscribe" => Ok(Command::Unsubscribe { topics }),
        other => Err(BadCommand(format!("Unknown op {other:?}; ops are subscribe and unsubscribe."))),
    }
}

/// Error codes of `{"type":"error"}` messages.
pub mod error_code {
    pub const BAD_REQUEST: &str = "bad_request";
    pub const FORBIDDEN: &str = "forbidden";
    pub const SINCE_EXPIRED: &str = "since_expired";
    pub const RATE_LIMITED: &str = "rate_limited";
}

/// What one connection may ask of the server: `COMMANDS_PER_SECOND` commands with a burst
/// of `COMMAND_BURST`, where every `EVENTS_PER_COMMAND` events a `since` replay sends count
/// as one more command. A replay is never cut short for it; its cost is debt that later
/// commands wait out. A GCRA bucket (one theoretical arrival time) on the session's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandBudget {
    /// Nanoseconds since the session began at which the bucket is empty again.
    tat_ns: u64,
}

impl CommandBudget {
    pub const COMMANDS_PER_SECOND: u64 = 10;
    pub const COMMAND_BURST: u64 = 20;
    pub const EVENTS_PER_COMMAND: u64 = 100;
    const INTERVAL_NS: u64 = 1_000_000_000 / Self::COMMANDS_PER_SECOND;
    const TOLERANCE_NS: u64 = Self::INTERVAL_NS * (Self::COMMAND_BURST - 1);

    /// Admits one command at `now_ns`, or says how long until one would be.
    pub fn try_command(&mut self, now_ns: u64) -> Result<(), std::time::Duration> {
        let tat = self.tat_ns.max(now_ns);
        let ahead = tat - now_ns;
        if ahead > Self::TOLERANCE_NS {
            return Err(std::time::Duration::from_nanos(ahead - Self::TOLERANCE_NS));
        }
        self.tat_ns = tat + Self::INTERVAL_NS;
        Ok(())
    }

    /// Charges `events` replayed events.
    pub fn charge_events(&mut self, now_ns: u64, events: u64) {
        let cost = events.saturating_mul(Self::INTERVAL_NS) / Self::EVENTS_PER_COMMAND;
        self.tat_ns = self.tat_ns.max(now_ns).saturating_add(cost);
    }
}

/// `{"type":"subscribed","topics":[...],"last_event_id":N}`
pub fn subscribed_message(topics: TopicSet, last_event_id: i64) -> String {
    serde_json::json!({"type": "subscribed", "topics": topics.names(), "last_event_id": last_event_id}).to_string()
}

/// `{"type":"error","code":"...","message":"..."}`
pub fn error_message(code: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "code": code, "message": message}).to_string()
}

/// `{"type":"event","id":N,"topic":"...","kind":"...","data":{...},"at":"..."}`, with
/// `data` the event's stored JSON payload as it is (rendered once, sent to many).
pub fn event_message(id: i64, topic: Topic, kind: &str, payload: &str, at: DateTime<Utc>) -> String {
    #[derive(Serialize)]
    struct Wire<'a> {
        r#type: &'static str,
        id: i64,
        topic: &'static str,
        kind: &'a str,
        data: Option<&'a RawValue>,
        at: String,
    }
    let data = serde_json::from_str::<&RawValue>(payload).ok();
    let wire = Wire {
        r#type: "event",
        id,
        topic: topic.name(),
        kind,
        data,
        at: at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Viewer {
        Viewer::User { id: Uuid::now_v7(), role }
    }

    #[test]
    fn anonymous_viewers_see_only_public_topics() {
        let anonymous = Viewer::Anonymous;
        assert!(anonymous.may_subscribe(Topic::Products));
        for topic in [Topic::Orders, Topic::Account, Topic::Ops] {
            assert!(!anonymous.may_subscribe(topic), "{topic:?}");
        }
        assert!(!anonymous.sees(Topic::Orders, None));
    }

    #[test]
    fn users_see_their_own_orders_and_balance_only() {
        let alice = user(Role::User);
        let bob = user(Role::User);
        let (alice_id, bob_id) = (alice.user_id(), bob.user_id());
        assert!(alice.sees(Topic::Orders, alice_id));
        assert!(!alice.sees(Topic::Orders, bob_id));
        assert!(alice.sees(Topic::Account, alice_id));
        assert!(!alice.sees(Topic::Account, bob_id));
        assert!(!alice.may_subscribe(Topic::Ops));
    }

    #[test]
    fn admins_see_every_order_but_only_their_own_balance() {
        let admin = user(Role::Admin);
        let someone = Some(Uuid::now_v7());
        assert!(admin.sees(Topic::Orders, someone));
        assert!(!admin.sees(Topic::Account, someone));
        assert!(admin.may_subscribe(Topic::Ops) && admin.sees(Topic::Ops, None));
    }

    #[test]
    fn topic_sets_hold_exactly_what_was_inserted() {
        let mut set: TopicSet = [Topic::Orders, Topic::Ops].into_iter().collect();
        assert_eq!(set.names(), ["orders", "ops"]);
        set.remove(Topic::Ops);
        set.insert(Topic::Products);
        assert_eq!(set.names(), ["products", "orders"]);
        assert_eq!(Topic::parse("account"), Some(Topic::Account));
        assert_eq!(Topic::parse("users"), None, "the internal users topic is not subscribable");
    }

    #[test]
    fn commands_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_command(r#"{"op":"subscribe","topics":["products","orders"],"since":7}"#),
            Ok(Command::Subscribe { topics: vec![Topic::Products, Topic::Orders], since: Some(7) })
        );
        assert_eq!(
            parse_command(r#"{"op":"unsubscribe","topics":["ops"]}"#),
            Ok(Command::Unsubscribe { topics: vec![Topic::Ops] })
        );
        for bad in [
            "not json",
            "[1,2]",
            r#"{"op":"dance","topics":["products"]}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","topics":[]}"#,
            r#"{"op":"subscribe","topics":["users"]}"#,
            r#"{"op":"subscribe","topics":["products"],"since":-1}"#,
            r#"{"op":"subscribe","topics":["products"],"since":"7"}"#,
        ] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_pass_at_the_configured_rate_and_replays_count_by_their_events() {
        let second = 1_000_000_000;
        let mut budget = CommandBudget::default();
        let burst = (0..100).take_while(|_| budget.try_command(0).is_ok()).count() as u64;
        assert_eq!(burst, CommandBudget::COMMAND_BURST);
        let wait = budget.try_command(0).expect_err("over the burst");
        assert_eq!(wait, std::time::Duration::from_millis(100));
        // Over ten seconds, the rate admits ten a second and no more.
        let admitted = (1..=1000).filter(|tick| budget.try_command(tick * second / 100).is_ok()).count();
        assert_eq!(admitted, 100);

        let mut replayed = CommandBudget::default();
        replayed.charge_events(0, 10_000);
        assert!(replayed.try_command(0).is_err(), "a 10,000-event replay costs 100 commands");
        // 10 s of debt, less the burst's 1.9 s of tolerance.
        assert!(replayed.try_command(8 * second).is_err());
        assert!(replayed.try_command(8 * second + second / 10).is_ok());
    }

    #[test]
    fn events_render_their_payload_as_json() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.5Z").unwrap().with_timezone(&Utc);
        let text = event_message(42, Topic::Products, "product.updated", r#"{"id":"p","stock":3}"#, at);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type":"event","id":42,"topic":"products","kind":"product.updated",
                "data":{"id":"p","stock":3},"at":"2026-12-01T10:00:00.500Z"})
        );
    }
}
