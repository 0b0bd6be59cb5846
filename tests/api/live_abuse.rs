//! Live updates against hostile clients, black-box with a raw socket: whatever a client
//! does, its connection costs a bounded amount of memory and one descriptor, and the
//! replica keeps serving everyone else. Memory is read from the server process's
//! `/proc/<pid>/status` and its `storefront_ws_buffered_bytes` gauge, with generous bounds.

use std::{net::SocketAddr, time::Duration};

use crate::common::{
    child_server::ChildServer,
    events::execute,
    raw_ws::{Handshake, RawWs, ServerFrame},
    Backend, TestApp, TestDatabase, JWT_SECRET,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

on_both_backends!(
    never_reading_replayers_are_closed_within_bounded_memory_and_resume_without_loss,
    a_password_change_closes_the_connections_its_old_tokens_opened,
    paused_sessions_still_count_and_still_hear_a_revocation,
);

fn address_of(app: &TestApp) -> SocketAddr {
    app.address.trim_start_matches("http://").parse().expect("a socket address")
}

async fn subscribe(ws: &mut RawWs, topics: &[&str], since: Option<i64>) -> Value {
    let mut command = json!({"op": "subscribe", "topics": topics});
    if let Some(since) = since {
        command["since"] = json!(since);
    }
    assert!(ws.send_text(&command.to_string()).await);
    ws.next_json().await
}

/// Appends `count` product events of about `size` bytes each straight to the outbox (a bulk
/// import by another service, say); answers the last id.
fn bulk_events(database_url: &str, count: usize, size: usize) -> i64 {
    let padding = "x".repeat(size);
    let at = chrono::Utc::now().naive_utc().format("%Y-%m-%d %H:%M:%S%.6f");
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|i| format!("('products', 'product.updated', NULL, '{{\"id\":\"bulk-{i}\",\"pad\":\"{padding}\"}}', NULL, '{at}')"))
            .collect();
        execute(
            database_url,
            &format!(
                "INSERT INTO events (topic, kind, user_id, payload, origin, created_at) VALUES {}",
                rows.join(", ")
            ),
        );
    }
    crate::common::events::read_events(database_url).last().map(|event| event.id).expect("events")
}

/// Waits until the server's hub has taken in the outbox through `id` (a subscription's
/// `last_event_id` says where it stands).
async fn hub_reaches(address: SocketAddr, id: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut probe = RawWs::open(address, Handshake::default()).await.expect("upgrade");
        let answer = subscribe(&mut probe, &["products"], None).await;
        if answer["last_event_id"].as_i64().unwrap_or(0) >= id {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hub never took in event {id}: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn never_reading_replayers_are_closed_within_bounded_memory_and_resume_without_loss(backend: Backend) {
    let database = TestDatabase::create(backend);
    let server = ChildServer::start(&database.url(), &[], None).await;
    let last = bulk_events(&database.url(), 1_100, 8_000);
    hub_reaches(server.address, last).await;
    let idle_rss = server.rss_bytes();

    // A hundred anonymous clients from a few addresses ask for the whole outbox and never
    // read a byte of it. (Before, each held ~2 MB for 40 s.)
    const CLIENTS: usize = 100;
    let mut hostile = Vec::new();
    for index in 0..CLIENTS {
        let from = format!("127.0.0.{}", 10 + index / 25);
        let mut ws =
            RawWs::open(server.address, Handshake::default().from(&from).small_buffer()).await.expect("upgrade");
        assert!(ws.send_text(&json!({"op": "subscribe", "topics": ["products"], "since": 0}).to_string()).await);
        hostile.push(ws);
    }
    let (mut peak_rss, mut peak_buffered) = (0u64, 0f64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        peak_rss = peak_rss.max(server.rss_bytes());
        peak_buffered = peak_buffered.max(server.metric("storefront_ws_buffered_bytes").await);
        let closed = server.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await;
        if closed >= CLIENTS as f64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {closed} of {CLIENTS} never-reading clients were closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bound the README states: 64 KiB of queued frames plus one event, per connection.
    let per_connection = 64 * 1024 + 9_000;
    assert!(
        peak_buffered <= (CLIENTS * per_connection) as f64,
        "buffered {peak_buffered} bytes for {CLIENTS} connections"
    );
    let grown = peak_rss.saturating_sub(idle_rss);
    assert!(grown < 60 * 1024 * 1024, "RSS grew by {} MiB for {CLIENTS} never-reading replays", grown >> 20);

    // One of them reads at last: what it got is a gap-free prefix, and resuming with the
    // last id it saw delivers the rest, each event once.
    let mut received = Vec::new();
    let mut client = hostile.pop().expect("a client");
    let ended_with = loop {
        match client.next_frame().await {
            Some(ServerFrame::Text(text)) => {
                let message: Value = serde_json::from_str(&text).expect("JSON");
                if message["type"] == "event" {
                    received.push(message["id"].as_i64().expect("an id"));
                }
            }
            Some(ServerFrame::Close(close)) => break close,
            Some(_) => continue,
            None => break None,
        }
    };
    if let Some((code, reason)) = ended_with {
        assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    }
    let first = crate::common::events::read_events(&database.url()).first().map(|event| event.id).expect("events");
    assert!(received.len() < 1_100, "a client that never read was not handed the whole outbox");
    assert_eq!(received, (first..first + received.len() as i64).collect::<Vec<_>>(), "a gap-free prefix");
    let resume_from = received.last().copied().unwrap_or(0);
    let mut resumed = RawWs::open(server.address, Handshake::default()).await.expect("upgrade");
    assert_eq!(subscribe(&mut resumed, &["products"], Some(resume_from)).await["type"], "subscribed");
    let mut rest = Vec::new();
    while rest.last() != Some(&last) {
        let message = resumed.next_json().await;
        assert_eq!(message["type"], "event", "{message}");
        rest.push(message["id"].as_i64().expect("an id"));
    }
    assert_eq!(rest, (resume_from + 1..=last).collect::<Vec<_>>(), "the rest, each once");
}

async fn a_password_change_closes_the_connections_its_old_tokens_opened(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    // A second replica learns of the change from the outbox (NOTIFY on PostgreSQL).
    let second = TestApp::builder(backend)
        .database_url(&first.database_url)
        .setting("event-poll-interval-ms", "100")
        .spawn()
        .await;
    let (_, admin) = first.admin("root@example.com").await;
    let (alice_id, alice) = first.user("alice@example.com").await;
    let mut here = RawWs::open(address_of(&first), Handshake::default().bearer(&alice)).await.expect("upgrade");
    let mut there = RawWs::open(address_of(&second), Handshake::default().bearer(&alice)).await.expect("upgrade");
    subscribe(&mut here, &["account"], None).await;
    subscribe(&mut there, &["account"], None).await;

    // An admin resets Alice's password (a thief's token must not outlive that).
    let reset = first
        .send_json(Method::PATCH, &format!("/api/v1/users/{alice_id}"), &admin, &json!({"password": "a new long one"}))
        .await;
    assert_eq!(reset.status(), 200);
    for (replica, ws) in [("this", &mut here), ("the other", &mut there)] {
        assert_eq!(ws.close_frame().await, Some((1008, "token revoked".to_owned())), "on {replica} replica");
    }
    assert!(first.metric(r#"storefront_ws_disconnects_total{reason="token_revoked"}"#).await >= 1.0);

    // A connection opened with a token issued after the change stays, and hears her balance.
    let fresh = first.login("alice@example.com", "a new long one").await.json::<Value>().await.unwrap();
    let fresh = fresh["access_token"].as_str().expect("a token");
    let mut after = RawWs::open(address_of(&second), Handshake::default().bearer(fresh)).await.expect("upgrade");
    subscribe(&mut after, &["account"], None).await;
    let deposited = first
        .request(Method::POST, &format!("/api/v1/accounts/{alice_id}/deposits"))
        .bearer_auth(&admin)
        .json(&json!({"amount_cents": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(deposited.status(), 201);
    let event = after.next_json().await;
    assert_eq!((event["type"].as_str(), event["kind"].as_str()), (Some("event"), Some("account.updated")), "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_is_refused_before_its_payload_arrives() {
    let database = TestDatabase::create(Backend::Sqlite);
    let server = ChildServer::start(&database.url(), &[], None).await;
    let before = server.rss_bytes();
    let mut ws = RawWs::open(server.address, Handshake::default()).await.expect("upgrade");
    // A header declaring 2^62 bytes, then data for as long as the server takes it.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 62).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    assert!(ws.send_raw(&header).await);
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 256 * 1024 * 1024 && ws.send_raw(&chunk).await {
        sent += chunk.len();
    }
    assert!(sent < 256 * 1024 * 1024, "the server kept taking a frame it should have refused");
    assert_eq!(ws.close_frame().await, Some((1009, "message larger than 4 KiB".to_owned())));
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 16 * 1024 * 1024, "RSS grew by {} MiB", grown >> 20);
    assert_eq!(server.metric(r#"storefront_ws_disconnects_total{reason="frame_too_big"}"#).await, 1.0);

    // Fragments are bounded in total the same way.
    let mut fragmented = RawWs::open(server.address, Handshake::default()).await.expect("upgrade");
    assert!(fragmented.send_raw(&RawWs::frame(0x01, &[b' '; 3000])).await);
    assert!(fragmented.send_raw(&RawWs::frame(0x00, &[b' '; 3000])).await);
    assert_eq!(fragmented.close_frame().await.map(|(code, _)| code), Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_close_codes_and_a_goodbye_is_answered() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let address = address_of(&app);
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("invalid UTF-8", RawWs::frame(0x81, &[0x7B, 0xC3, 0x28, 0x7D]), 1007),
        ("RSV1 without an extension", RawWs::frame(0xC1, b"{}"), 1002),
        ("a reserved opcode", RawWs::frame(0x83, b""), 1002),
        ("an unmasked frame", vec![0x81, 0x02, b'{', b'}'], 1002),
        ("a binary frame", RawWs::frame(0x82, b"\x00\x01"), 1003),
    ];
    for (case, frame, code) in cases {
        let mut ws = RawWs::open(address, Handshake::default()).await.expect("upgrade");
        assert!(ws.send_raw(&frame).await);
        assert_eq!(ws.close_frame().await.map(|(code, _)| code), Some(code), "{case}");
        assert!(ws.ended().await, "{case}: the server closes the connection after its close frame");
    }

    // A normal goodbye gets a Close back (RFC 6455 §5.5.1), not a dropped connection.
    let mut ws = RawWs::open(address, Handshake::default()).await.expect("upgrade");
    subscribe(&mut ws, &["products"], None).await;
    assert!(ws.send_raw(&RawWs::frame(0x88, &[0x03, 0xE8])).await);
    assert_eq!(ws.close_frame().await, Some((1000, String::new())));
    assert!(ws.ended().await);
    // A ping is answered while the connection is open.
    let mut pinging = RawWs::open(address, Handshake::default()).await.expect("upgrade");
    assert!(pinging.send_raw(&RawWs::frame(0x89, b"are you there")).await);
    assert_eq!(pinging.next_frame().await, Some(ServerFrame::Pong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_are_capped_per_address() {
    let app = TestApp::builder(Backend::Sqlite).setting("ws-max-anonymous-per-address", "3").spawn().await;
    let address = address_of(&app);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(RawWs::open(address, Handshake::default().from("127.0.0.21")).await.expect("upgrade"));
    }
    let refused = RawWs::open(address, Handshake::default().from("127.0.0.21")).await.err().expect("refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["status"], 429, "a problem: {:?}", refused.body);
    assert_eq!(app.metric(r#"storefront_ws_refused_total{reason="per_address"}"#).await, 1.0);

    // Another address, and a signed-in user from the same one, are not held back.
    let _other = RawWs::open(address, Handshake::default().from("127.0.0.22")).await.expect("another address");
    let (_, alice) = app.user("alice@example.com").await;
    let _alice =
        RawWs::open(address, Handshake::default().from("127.0.0.21").bearer(&alice)).await.expect("a signed-in user");

    // Closing one gives its place back.
    let mut leaving = held.pop().expect("a connection");
    assert!(leaving.send_raw(&RawWs::frame(0x88, &[0x03, 0xE8])).await);
    assert!(leaving.ended().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match RawWs::open(address, Handshake::default().from("127.0.0.21")).await {
            Ok(admitted) => {
                held.push(admitted);
                break;
            }
            Err(refusal) => {
                assert_eq!(refusal.status, 429);
                assert!(tokio::time::Instant::now() < deadline, "the freed place was never given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let forged = |handshake: Handshake| {
        handshake.header("origin", "http://evil.example").header("x-forwarded-host", "evil.example")
    };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let refused = RawWs::open(address_of(&app), forged(Handshake::default())).await.err().expect("refused");
    assert_eq!(refused.status, 403, "a foreign origin cannot vouch for itself");
    let forwarded =
        Handshake::default().header("origin", "http://evil.example").header("forwarded", "host=evil.example");
    assert_eq!(RawWs::open(address_of(&app), forwarded).await.err().expect("refused").status, 403);

    // Behind a trusted proxy, the public origin is what the proxy says it is.
    let proxied = TestApp::builder(Backend::Sqlite).setting("trusted-proxies", "127.0.0.0/8").spawn().await;
    assert!(RawWs::open(address_of(&proxied), forged(Handshake::default())).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_rate_limited_and_replays_count_by_their_events() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let address = address_of(&app);
    // Two hundred commands at once: the burst is answered, then refusals, and going on
    // regardless ends the connection.
    let mut flooding = RawWs::open(address, Handshake::default()).await.expect("upgrade");
    let command = json!({"op": "subscribe", "topics": ["products"]}).to_string();
    for _ in 0..200 {
        if !flooding.send_text(&command).await {
            break;
        }
    }
    let (mut subscribed, mut limited) = (0, 0);
    let close = loop {
        match flooding.next_frame().await {
            Some(ServerFrame::Text(text)) => {
                let answer: Value = serde_json::from_str(&text).expect("JSON");
                match (answer["type"].as_str(), answer["code"].as_str()) {
                    (Some("subscribed"), _) => subscribed += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    _ => panic!("unexpected {answer}"),
                }
            }
            Some(ServerFrame::Close(close)) => break close,
            Some(_) => continue,
            None => break None,
        }
    };
    assert!(subscribed >= 20 && limited >= 1, "{subscribed} answered, {limited} refused");
    assert_eq!(close, Some((1008, "rate limited".to_owned())));

    // A replay costs one command per hundred events it sends: 20,000 events are 20 s of
    // commands, so the next one has to wait.
    let last = bulk_events(&app.database_url, 20_000, 10);
    hub_reaches(address, last).await;
    let mut replaying = RawWs::open(address, Handshake::default()).await.expect("upgrade");
    assert_eq!(subscribe(&mut replaying, &["products"], Some(0)).await["type"], "subscribed");
    let mut replayed = 0;
    while replayed < 20_000 {
        assert_eq!(replaying.next_json().await["type"], "event");
        replayed += 1;
    }
    assert!(replaying.send_text(&json!({"op": "unsubscribe", "topics": ["products"]}).to_string()).await);
    let answer = replaying.next_json().await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_leaves_health_and_sign_in_answering() {
    let database = TestDatabase::create(Backend::Sqlite);
    let mut server = ChildServer::start(&database.url(), &[("DB_POOL_SIZE", "4")], Some(256)).await;
    let warning = server.log_line("WS_MAX_CONNECTIONS is more than the open-file limit leaves").await;
    assert_eq!(warning["open_file_limit"], 256, "{warning}");
    assert_eq!(warning["ws_max_connections"], 20_000, "{warning}");
    let cap = warning["live_connections"].as_u64().expect("the lowered cap") as usize;
    assert!(cap > 0 && cap < 200, "{warning}");

    // Anonymous clients from many addresses (so the per-address cap is not what stops
    // them) open connections until the replica refuses.
    let mut held = Vec::new();
    let refusal = loop {
        let from = format!("127.0.1.{}", 1 + held.len() / 20);
        match RawWs::open(server.address, Handshake::default().from(&from)).await {
            Ok(ws) => held.push(ws),
            Err(refusal) => break refusal,
        }
        assert!(held.len() <= cap, "more connections than the cap the open-file limit leaves");
    };
    assert_eq!((refusal.status, held.len()), (503, cap));
    assert_eq!(server.metric(r#"storefront_ws_refused_total{reason="descriptors"}"#).await, 1.0);

    // Everyone else is still served.
    assert_eq!(server.get("/livez").await.status(), 200);
    assert_eq!(server.get("/readyz").await.status(), 200);
    let (_, token) = server.user("late@example.com").await;
    assert!(!token.is_empty());
    let product = server.client.get(format!("{}/api/v1/products", server.base)).send().await.expect("products");
    assert_eq!(product.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_pings_and_never_reads_is_held_to_its_bound() {
    let database = TestDatabase::create(Backend::Sqlite);
    let server = ChildServer::start(&database.url(), &[], None).await;
    let before = server.rss_bytes();
    // Empty pings, as fast as the server takes them, from a client that reads nothing:
    // each asks for a pong that cannot be delivered. (Before, one such client grew the
    // server by gigabytes.)
    let ws = RawWs::open(server.address, Handshake::default().small_buffer()).await.expect("upgrade");
    let (_reader, mut writer) = ws.split();
    let pings: Vec<u8> = (0..1024).flat_map(|_| RawWs::frame(0x89, b"")).collect();
    let mut peak_buffered = 0f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_millis(100), writer.write_all(&pings)).await {
            Ok(Ok(())) => {}
            // The server has closed the connection.
            Ok(Err(_)) => break,
            // The server reads no more: TCP pushes back.
            Err(_) => {}
        }
        peak_buffered = peak_buffered.max(server.metric("storefront_ws_buffered_bytes").await);
        if server.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a client that reads nothing was never closed");
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 16 * 1024 * 1024, "RSS grew by {} MiB", grown >> 20);
    assert!(peak_buffered < 256.0 * 1024.0, "{peak_buffered} bytes buffered for one connection");
    assert_eq!(server.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_frames_postpones_no_deadline() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (alice_id, _) = app.user("alice@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let claims = storefront::auth::tokens::Claims {
        iss: "storefront".into(),
        aud: "storefront-api".into(),
        sub: alice_id,
        role: storefront::domain::user::Role::User,
        iat: now,
        nbf: now,
        exp: now + 2,
        gen: 0,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    // A client that reads everything (so it is never slow) and sends pings without pause
    // until the server closes it.
    let ws = RawWs::open(address_of(&app), Handshake::default().bearer(&token)).await.expect("upgrade");
    let (mut reader, mut writer) = ws.split();
    let flood = tokio::spawn(async move {
        let pings: Vec<u8> = (0..256).flat_map(|_| RawWs::frame(0x89, b"")).collect();
        while writer.write_all(&pings).await.is_ok() {}
    });
    let close = tokio::time::timeout(Duration::from_secs(30), reader.close_frame()).await;
    flood.abort();
    assert_eq!(
        close.expect("the token's expiry was not postponed by the flood"),
        Some((1008, "token expired".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_the_handshake_is_answered_is_bounded() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let address = address_of(&app);
    // A subscribe sent right behind the handshake (some clients do) is taken.
    let subscribe = RawWs::frame(0x81, json!({"op": "subscribe", "topics": ["products"]}).to_string().as_bytes());
    let mut eager = RawWs::open_with_early(address, &subscribe).await.expect("upgrade");
    assert_eq!(eager.next_json().await["type"], "subscribed");
    // 64 KiB of frames before the answer is not held: the connection is refused 1009.
    let flood: Vec<u8> = (0..10_000).flat_map(|_| RawWs::frame(0x89, b"")).collect();
    let mut greedy = RawWs::open_with_early(address, &flood).await.expect("upgrade");
    assert_eq!(greedy.close_frame().await.map(|(code, _)| code), Some(1009));
    assert!(app.metric("storefront_ws_buffered_bytes").await < 8.0 * 1024.0);
}

async fn paused_sessions_still_count_and_still_hear_a_revocation(backend: Backend) {
    // Small queues, so the hub pauses a replaying session at once.
    let app = TestApp::builder(backend)
        .setting("ws-max-pending", "2")
        .setting("ws-max-anonymous-per-address", "2")
        .spawn()
        .await;
    let address = address_of(&app);
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let last = bulk_events(&app.database_url, 2_000, 2_000);
    hub_reaches(address, last).await;

    // Two anonymous clients and Alice replay the whole outbox, reading slowly but without
    // pause; meanwhile new events fill their queues, so the hub pauses them.
    // Each reads until the product is renamed "done" (the test's last write).
    let mut readers = Vec::new();
    let handshakes = [
        Handshake::default().from("127.0.0.31"),
        Handshake::default().from("127.0.0.31"),
        Handshake::default().from("127.0.0.32").bearer(&alice),
    ];
    for handshake in handshakes {
        let mut ws = RawWs::open(address, handshake.small_buffer()).await.expect("upgrade");
        assert_eq!(subscribe(&mut ws, &["products"], Some(0)).await["type"], "subscribed");
        let (mut reader, writer) = ws.split();
        readers.push(tokio::spawn(async move {
            let _writer = writer;
            let mut ids = Vec::new();
            loop {
                match reader.next_frame().await {
                    Some(ServerFrame::Text(text)) => {
                        let message: Value = serde_json::from_str(&text).expect("JSON");
                        if message["type"] == "event" {
                            ids.push(message["id"].as_i64().expect("an id"));
                            if message["data"]["name"] == "done" {
                                return (ids, None);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Some(ServerFrame::Close(close)) => return (ids, close),
                    Some(_) => {}
                    None => return (ids, None),
                }
            }
        }));
    }
    let product = app
        .send_json(Method::POST, "/api/v1/products", &admin, &json!({"name": "Fan", "price_cents": 100, "stock": 1}))
        .await;
    assert_eq!(product.status(), 201);
    let product = product.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    for stock in 0..20 {
        let patched = app
            .send_json(Method::PATCH, &format!("/api/v1/products/{product}"), &admin, &json!({"stock": stock}))
            .await;
        assert_eq!(patched.status(), 200);
    }

    // Paused or not, they still count: a third anonymous connection from that address is refused.
    let refused = RawWs::open(address, Handshake::default().from("127.0.0.31")).await.err().expect("refused");
    assert_eq!(refused.status, 429);
    // And Alice's, paused mid-replay or not, closes when her password is reset.
    let reset = app
        .send_json(Method::PATCH, &format!("/api/v1/users/{alice_id}"), &admin, &json!({"password": "a new long one"}))
        .await;
    assert_eq!(reset.status(), 200);
    let alices = readers.pop().expect("Alice's reader");
    let (_, close) = alices.await.unwrap();
    assert_eq!(close, Some((1008, "token revoked".to_owned())));

    // The anonymous ones, reading on, get every product event once, in order, and stay.
    let done =
        app.send_json(Method::PATCH, &format!("/api/v1/products/{product}"), &admin, &json!({"name": "done"})).await;
    assert_eq!(done.status(), 200);
    let products: Vec<i64> = crate::common::events::read_events(&app.database_url)
        .into_iter()
        .filter(|event| event.topic == "products")
        .map(|event| event.id)
        .collect();
    for reader in readers {
        let (ids, close) = reader.await.unwrap();
        assert_eq!(close, None, "a reading client was closed");
        assert_eq!(ids, products, "every product event, once, in order");
    }
    assert_eq!(app.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_cannot_hold_the_slots_health_checks_need() {
    use tokio::io::AsyncReadExt;
    let database = TestDatabase::create(Backend::Sqlite);
    let server = ChildServer::start(&database.url(), &[("DB_POOL_SIZE", "4")], Some(256)).await;
    // More keep-alive clients than the replica accepts HTTP connections at this open-file
    // limit, each asking again every 300 ms and reconnecting whenever it is let go.
    let address = server.address;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut holders = Vec::new();
    for index in 0..80 {
        let stopped = stopped.clone();
        holders.push(tokio::spawn(async move {
            let from: std::net::IpAddr = format!("127.0.2.{}", 1 + index % 4).parse().unwrap();
            let request = format!("GET /livez HTTP/1.1\r\nHost: {address}\r\n\r\n");
            while !*stopped.borrow() {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(SocketAddr::new(from, 0)).unwrap();
                let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(address)).await
                else {
                    continue;
                };
                let mut buffer = [0u8; 1024];
                loop {
                    if *stopped.borrow() || stream.write_all(request.as_bytes()).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
                        Ok(Ok(read)) if read > 0 => {}
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }));
    }
    // Let them settle in, then everyone else must still be served, on fresh connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.metric("storefront_http_connections").await < 48.0 {
        assert!(tokio::time::Instant::now() < deadline, "the holders never crowded the replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let fresh =
            reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(20)).build().unwrap();
        for path in ["/livez", "/readyz"] {
            let answer = fresh.get(format!("{}{path}", server.base)).send().await;
            assert_eq!(answer.map(|answer| answer.status().as_u16()).ok(), Some(200), "{path} while crowded");
        }
        let signed_up = fresh
            .post(format!("{}/api/v1/auth/register", server.base))
            .json(&json!({"email": format!("late{}@example.com", rand_suffix()), "password": crate::common::PASSWORD, "name": "Late"}))
            .send()
            .await;
        assert_eq!(signed_up.map(|answer| answer.status().as_u16()).ok(), Some(201), "sign-up while crowded");
    }
    let _ = stop.send(true);
    for holder in holders {
        holder.abort();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0)
}
