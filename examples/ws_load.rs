//! Load generator for live updates (`bench/ws.sh` drives it): holds N WebSocket
//! subscribers on `products` and, unless `--idle`, commits product updates at a steady
//! rate through the HTTP API, then reports the delivery latency of every event to every
//! subscriber (receipt time minus the event's commit time, `at`) as one JSON line.
//!
//! ```text
//! ws_load --subscribe-url http://127.0.0.1:18100 [--write-url URL] --token ADMIN_JWT
//!         --product ID --subscribers N --rate PER_SECOND --seconds S [--idle]
//! ```
//! `--write-url` defaults to the subscribe URL; pointing it at another replica measures
//! cross-replica delivery. With `--idle` the subscribers connect, print `ready` and hold
//! their connections for `--seconds` (the script reads the server's RSS meanwhile).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: failing loudly is right

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    subscribe_url: String,
    write_url: String,
    token: String,
    product: String,
    subscribers: usize,
    rate: f64,
    seconds: u64,
    idle: bool,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let (mut subscribe_url, mut write_url, mut token, mut product) = (None, None, None, None);
    let (mut subscribers, mut rate, mut seconds, mut idle) = (1000, 10.0, 10, false);
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
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(url: &str) -> Socket {
    let ws_url = format!("{}/api/v1/ws", url.replacen("http://", "ws://", 1));
    let mut attempt = 0;
    let (mut socket, _) = loop {
        match tokio_tungstenite::connect_async(ws_url.as_str()).await {
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

/// Receives until `stop`, returning each event's delivery latency in microseconds.
async fn listen(mut socket: Socket, stop: tokio::sync::watch::Receiver<bool>) -> Vec<u32> {
    let mut latencies = Vec::new();
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => return latencies,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let received = chrono::Utc::now();
                    let event: Value = serde_json::from_str(&text).unwrap();
                    if let Some(at) = event["at"].as_str().and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok()) {
                        let micros = (received - at.with_timezone(&chrono::Utc)).num_microseconds().unwrap_or(0);
                        latencies.push(micros.clamp(0, i64::from(u32::MAX)) as u32);
                    }
                }
                Some(Ok(_)) => {}
                _ => return latencies,
            },
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

#[tokio::main]
async fn main() {
    let args = parse_args();
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

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listeners: Vec<_> = sockets.into_iter().map(|socket| tokio::spawn(listen(socket, stop_rx.clone()))).collect();

    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticker = tokio::time::interval(interval);
    let total = (args.rate * args.seconds as f64) as u64;
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
    stop_tx.send_replace(true);
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
    all.sort_unstable();
    let report = json!({
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
