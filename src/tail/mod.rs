//! `storefront tail`: the first-party live-updates client. It subscribes over
//! `/api/v1/ws`, prints each event as one JSON line on stdout, and when the connection
//! drops or the server restarts it reconnects (with a capped backoff) and subscribes with
//! `since` = the last outbox event id it printed, so the output has no gap and no
//! duplicate. What each close or refusal means is decided in `resume`; everything it
//! has to tell a person goes to stderr.

pub mod resume;

use std::{
    io::{ErrorKind, Write},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Error as WsError, Message},
    MaybeTlsStream, WebSocketStream,
};
use url::Url;

use resume::{Backoff, Event, Next, Position};

/// Topics anyone may read; the others need a token.
const PUBLIC_TOPICS: [&str; 1] = ["products"];
const DEFAULT_TOPICS: [&str; 3] = ["products", "orders", "account"];
const KNOWN_TOPICS: [&str; 4] = ["products", "orders", "account", "ops"];
/// How long a connection attempt (TCP, TLS and the upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tail pings this often; the server answers each with a pong (and pings on its own).
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection silent this long (no event, ping or pong) is taken for lost.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What `storefront tail` was asked for, validated.
#[derive(Clone)]
pub struct TailOptions {
    url: Url,
    topics: Vec<String>,
    since: Option<i64>,
    token: Option<String>,
}

/// The access token never shows in Debug output.
impl std::fmt::Debug for TailOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { url, topics, since, token } = self;
        f.debug_struct("TailOptions")
            .field("url", url)
            .field("topics", topics)
            .field("since", since)
            .field("token", &crate::domain::redact::optional(token))
            .finish()
    }
}

impl TailOptions {
    /// `base` is the service's URL (`http(s)://` or `ws(s)://`, the path of
    /// `/api/v1/ws` is added); no `topics` means the default for a caller with or without
    /// a token.
    pub fn new(base: &str, topics: &[String], since: Option<i64>, token: Option<String>) -> Result<Self, String> {
        let url = live_updates_url(base)?;
        let topics: Vec<String> = if topics.is_empty() {
            let defaults: &[&str] = if token.is_some() { &DEFAULT_TOPICS } else { &PUBLIC_TOPICS };
            defaults.iter().map(|topic| (*topic).to_owned()).collect()
        } else {
            topics.iter().map(|topic| topic.trim().to_owned()).filter(|topic| !topic.is_empty()).collect()
        };
        if let Some(unknown) = topics.iter().find(|topic| !KNOWN_TOPICS.contains(&topic.as_str())) {
            return Err(format!("unknown topic {unknown:?} in --topics (known: {})", KNOWN_TOPICS.join(", ")));
        }
        if topics.is_empty() {
            return Err("--topics names no topic".into());
        }
        if since.is_some_and(|since| since < 0) {
            return Err("--since must be an event id (0 or more)".into());
        }
        let token = token.map(|token| token.trim().to_owned()).filter(|token| !token.is_empty());
        Ok(Self { url, topics, since, token })
    }
}

/// `http://host:8080` → `ws://host:8080/api/v1/ws` (a path prefix, as behind a proxy, is kept).
fn live_updates_url(base: &str) -> Result<Url, String> {
    let invalid = |why: String| format!("invalid --url {base:?}: {why}");
    let mut url = Url::parse(base).map_err(|error| invalid(error.to_string()))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(invalid(format!("the scheme {other:?} is not http, https, ws or wss"))),
    };
    url.set_scheme(scheme).map_err(|()| invalid("cannot use a WebSocket scheme".into()))?;
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().trim_end_matches('/').ends_with("/api/v1/ws") {
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        url = url.join("api/v1/ws").map_err(|error| invalid(error.to_string()))?;
    }
    Ok(url)
}

/// Runs until stopped: `Ok` when stdout was closed (`storefront tail | head`), `Err` with
/// what the user must do when reconnecting cannot help.
pub fn run(options: TailOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(follow(&options, &mut stdout))
}

/// Why a connection ended.
enum Ended {
    Next(Next),
    /// Stdout is gone: nobody reads what tail prints.
    OutputClosed,
}

async fn follow(options: &TailOptions, out: &mut impl Write) -> Result<(), String> {
    let mut position = Position::after(options.since);
    let mut backoff = Backoff::new();
    loop {
        let ended = match connect(options).await {
            Ok(socket) => stream(socket, options, &mut position, &mut backoff, out).await,
            Err(next) => Ended::Next(next),
        };
        let resume_hint = position.since().map(|since| format!("; resume with --since {since}")).unwrap_or_default();
        match ended {
            Ended::OutputClosed => return Ok(()),
            Ended::Next(Next::Stop { why }) => return Err(format!("tail stopped: {why}{resume_hint}")),
            Ended::Next(Next::Reconnect { why }) => {
                let delay = backoff.delay(rand::random());
                note(&format!("{why}; reconnecting in {:.1} s{}", delay.as_secs_f64(), resuming(position)));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn after(position: Position) -> String {
    position.since().map(|since| format!(", after event {since}")).unwrap_or_default()
}

fn resuming(position: Position) -> String {
    position.since().map(|since| format!(" to resume after event {since}")).unwrap_or_default()
}

/// One line on stderr for the person running tail.
fn note(message: &str) {
    eprintln!("storefront tail: {message}");
}

async fn connect(options: &TailOptions) -> Result<Socket, Next> {
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| Next::Stop { why: format!("cannot build a request for {}: {error}", options.url) })?;
    if let Some(token) = &options.token {
        // In the header, not `?access_token=`: nothing in a URL, so nothing in a proxy's log.
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Next::Stop { why: "the token is not a valid header value".into() })?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err(Next::Reconnect {
            why: format!("no answer from {} within {} s", options.url, CONNECT_TIMEOUT.as_secs()),
        }),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(WsError::Http(response))) => {
            let detail = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<Value>(body).ok())
                .and_then(|problem| problem["detail"].as_str().map(str::to_owned));
            Err(resume::refused(response.status().as_u16(), detail.as_deref()))
        }
        Ok(Err(error @ (WsError::Url(_) | WsError::Tls(_) | WsError::HttpFormat(_)))) => {
            Err(Next::Stop { why: format!("cannot connect to {}: {error}", options.url) })
        }
        // How the TLS layer reports a certificate it does not trust, or a peer that does not
        // speak TLS: trying again would fail the same way.
        Ok(Err(WsError::Io(error))) if error.kind() == ErrorKind::InvalidData => {
            Err(Next::Stop { why: format!("cannot connect to {}: {error}", options.url) })
        }
        Ok(Err(error)) => Err(Next::Reconnect { why: format!("cannot connect to {}: {error}", options.url) }),
    }
}

/// Subscribes, then prints events until the connection ends.
async fn stream(
    mut socket: Socket,
    options: &TailOptions,
    position: &mut Position,
    backoff: &mut Backoff,
    out: &mut impl Write,
) -> Ended {
    let since_at_start = position.since();
    let mut subscribe = json!({"op": "subscribe", "topics": options.topics});
    if let Some(since) = position.since() {
        subscribe["since"] = json!(since);
    }
    if let Err(error) = socket.send(Message::text(subscribe.to_string())).await {
        return Ended::Next(Next::Reconnect { why: format!("the connection broke while subscribing: {error}") });
    }
    let mut pings = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let connected_at = Instant::now();
    let mut last_heard = connected_at;
    let ended = loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = pings.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    let why = format!("nothing heard from the server for {} s", SILENCE_LIMIT.as_secs());
                    break Ended::Next(Next::Reconnect { why });
                }
                // Answers come back as frames; a failed send shows up as a read error next.
                let _ = socket.send(Message::Ping(Default::default())).await;
                continue;
            }
        };
        last_heard = Instant::now();
        let message = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                break Ended::Next(resume::closed(code, &reason));
            }
            // Pings are answered by the library; nothing else carries events.
            Some(Ok(_)) => continue,
            Some(Err(error)) => break Ended::Next(Next::Reconnect { why: format!("the connection broke: {error}") }),
            None => break Ended::Next(Next::Reconnect { why: "the connection ended without a close".into() }),
        };
        let Ok(message) = serde_json::from_str::<Value>(&message) else {
            note(&format!("ignored a message that is not JSON: {message}"));
            continue;
        };
        match message["type"].as_str() {
            Some("event") => match position.event(&message) {
                Event::Print => {
                    if let Err(error) = writeln!(out, "{message}").and_then(|()| out.flush()) {
                        if error.kind() == ErrorKind::BrokenPipe {
                            break Ended::OutputClosed;
                        }
                        break Ended::Next(Next::Stop { why: format!("cannot write to stdout: {error}") });
                    }
                }
                Event::Duplicate { id, last } => {
                    note(&format!("event {id} arrived after event {last}: already printed, not printed again"));
                }
                Event::Malformed => note(&format!("ignored an event without a numeric id and a topic: {message}")),
            },
            Some("subscribed") => {
                position.subscribed(&message);
                note(&format!("subscribed to {} at {}{}", topics_of(&message), options.url, after(*position)));
            }
            Some("error") => {
                if let Some(next) = on_error(&message) {
                    break Ended::Next(next);
                }
            }
            _ => note(&format!("ignored a message of an unknown type: {message}")),
        }
    };
    // A connection that printed events, or lasted, was a good one: the next attempt starts
    // the backoff over. One closed right after subscribing (a replay the server cannot read
    // while its database is away) keeps backing off.
    if position.since() != since_at_start || connected_at.elapsed() >= Backoff::CAP {
        backoff.reset();
    }
    ended
}

fn topics_of(subscribed: &Value) -> String {
    let topics: Vec<&str> = subscribed["topics"]
        .as_array()
        .map(|topics| topics.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if topics.is_empty() {
        "no topic".into()
    } else {
        topics.join(", ")
    }
}

/// An `error` message; the connection stays open unless the answer is to stop.
fn on_error(error: &Value) -> Option<Next> {
    let code = error["code"].as_str().unwrap_or("unknown");
    let message = error["message"].as_str().unwrap_or("");
    match code {
        "since_expired" => {
            note(&format!(
                "since_expired: some events after the position were already pruned, so the output has a gap \
                 here. Re-read the state you follow over HTTP (GET /api/v1/products, /api/v1/orders, \
                 /api/v1/account), then rely on the events printed from now on. The server says: {message}"
            ));
            None
        }
        "forbidden" => {
            note(&format!("forbidden: {message} (the other topics stand)"));
            None
        }
        "bad_request" => Some(Next::Stop {
            why: format!("the server did not understand the subscription: {message} (a bug in tail, or a server of another version)"),
        }),
        _ => {
            note(&format!("{code}: {message}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_print_no_token() {
        let options = TailOptions::new("http://127.0.0.1:8080", &[], None, Some("eyJ-secret-token".into())).unwrap();
        let printed = format!("{options:?}");
        assert!(!printed.contains("eyJ-secret-token") && printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn the_url_of_the_service_leads_to_its_live_updates_endpoint() {
        for (given, expected) in [
            ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/api/v1/ws"),
            ("https://shop.example/", "wss://shop.example/api/v1/ws"),
            ("https://shop.example/store", "wss://shop.example/store/api/v1/ws"),
            ("ws://127.0.0.1:8080/api/v1/ws", "ws://127.0.0.1:8080/api/v1/ws"),
            ("http://127.0.0.1:8080/?access_token=x", "ws://127.0.0.1:8080/api/v1/ws"),
        ] {
            assert_eq!(live_updates_url(given).unwrap().as_str(), expected, "{given}");
        }
        assert!(live_updates_url("ftp://shop.example").is_err());
        assert!(live_updates_url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn topics_default_to_what_the_caller_may_read_and_unknown_ones_are_refused() {
        let url = "http://127.0.0.1:8080";
        assert_eq!(TailOptions::new(url, &[], None, None).unwrap().topics, ["products"]);
        let with_token = TailOptions::new(url, &[], None, Some("t".into())).unwrap();
        assert_eq!(with_token.topics, ["products", "orders", "account"]);
        let chosen = ["ops".to_owned(), " orders".to_owned()];
        assert_eq!(TailOptions::new(url, &chosen, None, Some("t".into())).unwrap().topics, ["ops", "orders"]);
        assert!(TailOptions::new(url, &["order".to_owned()], None, None).unwrap_err().contains("\"order\""));
        assert!(TailOptions::new(url, &[], Some(-1), None).is_err());
        assert!(TailOptions::new(url, &[], None, Some("  \n".into())).unwrap().token.is_none());
    }
}
