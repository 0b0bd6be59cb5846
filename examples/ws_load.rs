//! Load generator for live updates (`bench/ws.sh` drives it): holds N WebSocket
//! subscribers on `products` and, unless `--idle`, commits product updates at a steady
//! rate through the HTTP API, then reports the delivery latency of every event to every
//! subscriber (receipt time minus the event's commit time, `at`) as one JSON line.
//!
//! ```text
//! ws_load --subscribe-url http://127.0.0.1:18100 [--write-url URL] --token ADMIN_JWT
//!         --product ID --subscribers N --rate PER_SECOND --seconds S [--idle]
//!         [--prefill EVENTS] [--hostile N]
//! ```
//! `--write-url` defaults to the subscribe URL; pointing it at another replica measures
//! cross-replica delivery. With `--idle` the subscribers connect, print `ready` and hold
//! their connections for `--seconds` (the script reads the server's RSS meanwhile).
//! `--prefill` first commits that many product updates as fast as the server takes them
//! (an outbox to replay); `--hostile` adds that many clients that subscribe with
//! `"since": 0`, never read a byte, and reconnect whenever the server closes them, for the
//! whole run (the readers' figures are then taken under that abuse). The report counts how
//! often the hostile clients were closed.
//!
//! It shares the machine with the server it measures, so it keeps its own cost small: one
//! thread, a 4 KiB read buffer per socket, and per message only the `at` field is read
//! (no JSON tree). A receipt is timed when the client gets to the message, so whatever
//! this process spends is counted as delivery latency; the less it spends, the closer the
//! figure is to the server's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: failing loudly is right

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

struct Args {
    subscribe_url: String,
    write_url: String,
    token: String,
    product: String,
    subscribers: usize,
    rate: f64,
    seconds: u64,
    idle: bool,
    prefill: u64,
    hostile: usize,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let (mut subscribe_url, mut write_url, mut token, mut product) = (None, None, None, None);
    let (mut subscribers, mut rate, mut seconds, mut idle) = (1000, 10.0, 10, false);
    let (mut prefill, mut hostile) = (0, 0);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--subscribe-url" => subscribe_url = Some(value()),
            "--write-url" => write_url = Some(value()),
            "--token" => token = Some(value()),
            "--product" => product = Some(value()),
            "--subscribers" => subscribers = value().parse().expect("a count"),
            "--rate" => rate = value().parse().expect("events per second"),
            "--seconds" => seconds = value().parse().expect("seconds"),
            "--idle" => idle = true,
            "--prefill" => prefill = value().parse().expect("a count"),
            "--hostile" => hostile = value().parse().expect("a count"),
            other => panic!("unknown flag {other}"),
        }
    }
    let subscribe_url = subscribe_url.expect("--subscribe-url");
    Args {
        write_url: write_url.unwrap_or_else(|| subscribe_url.clone()),
        subscribe_url,
        token: token.unwrap_or_default(),
        product: product.unwrap_or_default(),
        subscribers,
        rate,
        seconds,
        idle,
        prefill,
        hostile,
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(url: &str) -> Socket {
    let ws_url = format!("{}/api/v1/ws", url.replacen("http://", "ws://", 1));
    // Events are a few hundred bytes; tungstenite's default 128 KiB per socket would make
    // this process the largest thing on the machine.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut attempt = 0;
    let (mut socket, _) = loop {
        match tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(config), true).await {
            Ok(connected) => break connected,
            Err(error) if attempt < 20 => {
                attempt += 1;
                eprintln!("connect retry ({error})");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => panic!("cannot connect: {error}"),
        }
    };
    socket.send(Message::Text(json!({"op": "subscribe", "topics": ["products"]}).to_string().into())).await.unwrap();
    loop {
        if let Some(Ok(Message::Text(text))) = socket.next().await {
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(answer["type"], "subscribed", "{answer}");
            return socket;
        }
    }
}

/// The commit time of an event message, read from its `at` field without building a
/// JSON tree (the server writes `"at":"<RFC 3339>"` and no other field ends in `at`).
fn committed_at(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if !text.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let start = text.rfind(r#""at":""#)? + 6;
    let end = start + text[start..].find('"')?;
    chrono::DateTime::parse_from_rfc3339(&text[start..end]).ok().map(|at| at.with_timezone(&chrono::Utc))
}

/// Receives until `stop`, returning the delivery latency in microseconds of each event
/// committed from `measured_from` on (earlier ones, a prefill's tail, are not the
/// scenario's).
async fn listen(
    mut socket: Socket,
    stop: oneshot::Receiver<()>,
    expected: usize,
    measured_from: chrono::DateTime<chrono::Utc>,
) -> Vec<u32> {
    let mut latencies = Vec::with_capacity(expected);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let received = chrono::Utc::now();
                    if let Some(at) = committed_at(&text).filter(|at| *at >= measured_from) {
                        let micros = (received - at).num_microseconds().unwrap_or(0);
                        latencies.push(micros.clamp(0, i64::from(u32::MAX)) as u32);
                    }
                }
                Some(Ok(_)) => {}
                _ => return latencies,
            },
            _ = &mut stop => return latencies,
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

/// Commits `count` product updates, a few at a time, as fast as the server takes them.
async fn prefill(client: &reqwest::Client, args: &Args, count: u64) {
    let started = Instant::now();
    let writes = (0..count).map(|stock| {
        client
            .patch(format!("{}/api/v1/products/{}", args.write_url, args.product))
            .bearer_auth(&args.token)
            .json(&json!({"stock": stock, "description": "x".repeat(400)}))
            .send()
    });
    let mut pending = futures_util::stream::iter(writes).buffer_unordered(8);
    let mut failed = 0;
    while let Some(response) = pending.next().await {
        if !response.map(|r| r.status().is_success()).unwrap_or(false) {
            failed += 1;
        }
    }
    eprintln!("prefilled {count} events ({failed} failed) in {:.1}s", started.elapsed().as_secs_f64());
}

/// How long a hostile client leaves its socket unread: longer than the server's promise
/// to close a client that does not read (5 s, plus 2 s to say goodbye).
const UNREAD_FOR: Duration = Duration::from_secs(8);

/// What the hostile clients saw: connections the server closed while they did not read,
/// and ones it had not closed by then (a broken promise).
#[derive(Default)]
struct Abuse {
    closed: u64,
    survived: u64,
}

/// A client that asks for the whole outbox and never reads: a 4 KiB receive buffer, a
/// subscribe with `"since": 0`, then nothing for `UNREAD_FOR`; then it checks that the
/// server let it go (reading what is left must end in EOF) and starts again.
async fn never_read(address: std::net::SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> Abuse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut abuse = Abuse::default();
    let subscribe = br#"{"op":"subscribe","topics":["products"],"since":0}"#;
    let mut frame = vec![0x81, 0x80 | subscribe.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(subscribe);
    let handshake = format!(
        "GET /api/v1/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    while !*stop.borrow() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let Ok(mut stream) = socket.connect(address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream.write_all(handshake.as_bytes()).await.is_err() || stream.write_all(&frame).await.is_err() {
            continue;
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = stop.changed() => return abuse,
            () = tokio::time::sleep(UNREAD_FOR) => {}
        }
        let mut sink = vec![0u8; 16384];
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
        });
        match drained.await {
            Ok(()) => abuse.closed += 1,
            Err(_) => abuse.survived += 1,
        }
    }
    abuse
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let client = reqwest::Client::new();
    if args.prefill > 0 {
        prefill(&client, &args, args.prefill).await;
    }
    let (stop_hostile, hostile_stop) = tokio::sync::watch::channel(false);
    let hostile: Vec<_> = if args.hostile > 0 {
        let address: std::net::SocketAddr =
            args.subscribe_url.trim_start_matches("http://").parse().expect("an http://IP:PORT url");
        (0..args.hostile).map(|_| tokio::spawn(never_read(address, hostile_stop.clone()))).collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    // Connect in waves so the listen backlog never overflows.
    let mut sockets = Vec::with_capacity(args.subscribers);
    for wave in (0..args.subscribers).collect::<Vec<_>>().chunks(200) {
        let connecting = wave.iter().map(|_| subscribe(&args.subscribe_url));
        sockets.extend(futures_util::future::join_all(connecting).await);
    }
    eprintln!("{} subscribers connected in {:.1}s", sockets.len(), started.elapsed().as_secs_f64());
    if args.idle {
        println!("ready");
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        return;
    }

    let total = (args.rate * args.seconds as f64) as u64;
    let measured_from = chrono::Utc::now();
    let (stops, listeners): (Vec<_>, Vec<_>) = sockets
        .into_iter()
        .map(|socket| {
            let (stop, stopped) = oneshot::channel();
            (stop, tokio::spawn(listen(socket, stopped, total as usize, measured_from)))
        })
        .unzip();

    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticker = tokio::time::interval(interval);
    let mut failed_writes = 0;
    for stock in 0..total {
        ticker.tick().await;
        let response = client
            .patch(format!("{}/api/v1/products/{}", args.write_url, args.product))
            .bearer_auth(&args.token)
            .json(&json!({"stock": stock}))
            .send()
            .await;
        if !response.map(|r| r.status().is_success()).unwrap_or(false) {
            failed_writes += 1;
        }
    }
    // Let the last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for stop in stops {
        let _ = stop.send(());
    }
    let mut all = Vec::new();
    let mut short = 0;
    let expected = total - failed_writes;
    for listener in listeners {
        let latencies = listener.await.unwrap();
        if (latencies.len() as u64) < expected {
            short += 1;
        }
        all.extend(latencies);
    }
    let _ = stop_hostile.send(true);
    let mut abuse = Abuse::default();
    for client in hostile {
        let seen = client.await.unwrap_or_default();
        abuse.closed += seen.closed;
        abuse.survived += seen.survived;
    }
    all.sort_unstable();
    let report = json!({
        "hostile": args.hostile,
        "hostile_closed": abuse.closed,
        "hostile_not_closed": abuse.survived,
        "subscribers": args.subscribers,
        "events_written": expected,
        "failed_writes": failed_writes,
        "deliveries": all.len(),
        "deliveries_expected": expected * args.subscribers as u64,
        "subscribers_short": short,
        "p50_ms": percentile(&all, 50.0),
        "p99_ms": percentile(&all, 99.0),
        "max_ms": all.last().map_or(0.0, |max| f64::from(*max) / 1000.0),
    });
    println!("{report}");
}
