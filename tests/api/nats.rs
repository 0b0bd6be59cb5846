//! Publishing the outbox to NATS JetStream, against a real nats-server that each test
//! starts on a free port with a store of its own (so it can stop and restart it), read
//! back with a JetStream client as a consuming service would.
//!
//! Without a `nats-server` binary each test prints SKIPPED and passes, unless
//! `REQUIRE_NATS=1` (CI), which turns a missing server into a failure.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{
    events::{read_events, Event},
    Backend, TestApp, TestDatabase,
};
use async_nats::jetstream::{self, message::StreamMessage};
use diesel::{sql_types::Timestamp, Connection, PgConnection, RunQueryDsl, SqliteConnection};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    publishing_is_off_without_a_nats_url,
    every_committed_change_arrives_once_in_id_order_with_its_subject_and_headers,
    a_publisher_crashing_mid_stream_loses_and_duplicates_nothing,
    a_nats_outage_keeps_the_backlog_in_the_outbox_until_it_is_published,
    two_replicas_publish_each_event_once_and_the_survivor_takes_over,
);

const STREAM: &str = "STOREFRONT_EVENTS";
const PREFIX: &str = "storefront.events";
/// How long a test waits for the stream to catch up before it fails.
const CATCH_UP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// A private nats-server
// ---------------------------------------------------------------------------------------

struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    process: Option<Child>,
}

fn nats_server_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/sbin/nats-server")).chain(on_path).find(|candidate| candidate.is_file())
}

impl NatsServer {
    /// Starts a JetStream-enabled server, or `None` (with a loud SKIPPED) when there is no
    /// binary and CI does not require one.
    async fn start() -> Option<Self> {
        let Some(binary) = nats_server_binary() else {
            assert!(
                std::env::var("REQUIRE_NATS").map_or(true, |v| v != "1"),
                "REQUIRE_NATS=1 but no nats-server binary (apt-get install nats-server)"
            );
            eprintln!("SKIPPED: NATS test (no nats-server binary; apt-get install nats-server to run it)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { binary, port, store: tempfile::tempdir().unwrap(), process: None };
        server.resume().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    async fn resume(&mut self) {
        assert!(self.process.is_none(), "nats-server is already running");
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "nats-server did not listen on {} in 10 s", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message in the stream, in stream order (empty until the stream exists).
    async fn messages(&self) -> Vec<StreamMessage> {
        let Ok(client) = async_nats::connect(self.url()).await else { return Vec::new() };
        let context = jetstream::new(client);
        let Ok(mut stream) = context.get_stream(STREAM).await else { return Vec::new() };
        let state = stream.info().await.expect("stream info").state.clone();
        let mut messages = Vec::new();
        if state.messages > 0 {
            for sequence in state.first_sequence..=state.last_sequence {
                messages.push(stream.get_raw_message(sequence).await.expect("read a stream message"));
            }
        }
        messages
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn app_with_nats(backend: Backend, nats: &NatsServer) -> TestApp {
    TestApp::builder(backend).setting("nats-url", &nats.url()).spawn().await
}

/// The outbox events that are published: all but the internal `users` topic.
fn publishable(events: Vec<Event>) -> Vec<Event> {
    events.into_iter().filter(|event| event.topic != "users").collect()
}

fn message_id(message: &StreamMessage) -> i64 {
    let id = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .unwrap_or_else(|| panic!("Nats-Msg-Id header in {:?}", message.headers))
        .as_str();
    id.parse().unwrap_or_else(|_| panic!("Nats-Msg-Id {id:?} is an event id"))
}

/// Waits until the stream holds exactly one message per expected event, then checks each
/// against its event. Duplicates or losses never converge and fail at the deadline.
async fn assert_stream_holds_exactly(nats: &NatsServer, expected: &[Event]) -> Vec<StreamMessage> {
    let expected_ids: Vec<i64> = expected.iter().map(|event| event.id).collect();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let messages = loop {
        let messages = nats.messages().await;
        let ids: Vec<i64> = messages.iter().map(message_id).collect();
        if ids == expected_ids {
            break messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream did not come to hold exactly the outbox's events within {CATCH_UP:?}\n\
             stream: {ids:?}\noutbox: {expected_ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (message, event) in messages.iter().zip(expected) {
        assert_eq!(message.subject.as_str(), format!("{PREFIX}.{}.{}", event.topic, event.kind));
        let body: Value = serde_json::from_slice(&message.payload).expect("message body is JSON");
        assert_eq!(body["type"], "event");
        assert_eq!(body["id"], event.id);
        assert_eq!(body["topic"], event.topic.as_str());
        assert_eq!(body["kind"], event.kind.as_str());
        assert_eq!(body["data"], event.payload, "event {} body", event.id);
        let at = body["at"].as_str().expect("at is a string");
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "at {at:?} is RFC 3339");
    }
    messages
}

/// Polls `/readyz` until the `nats` check has `status`, asserting the replica stays ready.
async fn wait_for_nats_check(app: &TestApp, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 200, "publishing never decides readiness");
        let body: Value = response.json().await.unwrap();
        if body["checks"]["nats"][0]["status"] == status {
            return body["checks"]["nats"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the nats check did not turn {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_product(app: &TestApp, admin: &str, name: &str) -> String {
    let response = app
        .send_json(Method::POST, "/api/v1/products", admin, &json!({"name": name, "price_cents": 100, "stock": 1000}))
        .await;
    assert_eq!(response.status(), 201, "create {name}");
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn deposit(app: &TestApp, admin: &str, user_id: &str, amount_cents: i64) {
    let path = format!("/api/v1/accounts/{user_id}/deposits");
    let response = app.send_json(Method::POST, &path, admin, &json!({"amount_cents": amount_cents})).await;
    assert_eq!(response.status(), 201, "deposit");
}

async fn place_order(app: &TestApp, token: &str, product_id: &str) -> Value {
    let body = json!({"items": [{"product_id": product_id, "quantity": 1}]});
    let response = app.send_json(Method::POST, "/api/v1/orders", token, &body).await;
    assert_eq!(response.status(), 201, "place an order");
    response.json().await.unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

async fn publishing_is_off_without_a_nats_url(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health: Value = app.get("/readyz").await.json().await.unwrap();
    assert!(health["checks"].get("nats").is_none(), "no nats check when publishing is off: {health}");
    let refused = app.chaos(json!({"actor": "nats_publisher", "fault": "panic"})).await;
    let problem = crate::common::assert_problem(refused, 422).await;
    assert!(problem.to_string().contains("NATS"), "{problem}");
    // The metric families exist from start-up, at zero.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for family in ["storefront_nats_published_total", "storefront_nats_publish_lag_events"] {
        assert!(metrics.lines().any(|line| line == format!("{family} 0")), "{family} is exported at zero");
    }
}

async fn every_committed_change_arrives_once_in_id_order_with_its_subject_and_headers(backend: Backend) {
    let Some(nats) = NatsServer::start().await else { return };
    let app = app_with_nats(backend, &nats).await;
    assert_eq!(app.metric("storefront_nats_publish_lag_events").await, 0.0);
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let kettle = create_product(&app, &admin, "Kettle").await;
    deposit(&app, &admin, &alice_id, 1000).await;
    let ordered = app
        .request(Method::POST, "/api/v1/orders")
        .bearer_auth(&alice)
        .header("X-Request-Id", "checkout-42")
        .json(&json!({"items": [{"product_id": kettle, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ordered.status(), 201);
    let order_id = ordered.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let cancelled = app
        .request(Method::POST, &format!("/api/v1/orders/{order_id}/cancel"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let patched =
        app.send_json(Method::PATCH, &format!("/api/v1/products/{kettle}"), &admin, &json!({"price_cents": 150})).await;
    assert_eq!(patched.status(), 200);

    let renamed =
        app.send_json(Method::PATCH, &format!("/api/v1/users/{alice_id}"), &alice, &json!({"name": "Alice B."})).await;
    assert_eq!(renamed.status(), 200);

    let outbox = read_events(&app.database_url);
    assert!(outbox.iter().any(|event| event.topic == "users"), "the rename wrote a users event");
    let expected = publishable(outbox);
    let messages = assert_stream_holds_exactly(&nats, &expected).await;

    let kinds: Vec<&str> = expected.iter().map(|event| event.kind.as_str()).collect();
    for kind in ["product.created", "account.updated", "order.created", "order.cancelled", "product.updated"] {
        assert!(kinds.contains(&kind), "{kind} was published: {kinds:?}");
    }
    let created = messages.iter().find(|m| m.subject.as_str() == "storefront.events.orders.order.created").unwrap();
    assert_eq!(
        created.headers.get("X-Request-Id").map(|v| v.as_str()),
        Some("checkout-42"),
        "the event names the request that caused it"
    );
    let body: Value = serde_json::from_slice(&created.payload).unwrap();
    assert_eq!(body["data"]["id"], order_id.as_str());
    assert!(messages.iter().all(|m| !m.subject.as_str().starts_with("storefront.events.users.")));

    let check = wait_for_nats_check(&app, "pass").await;
    assert_eq!(check["output"], "publishing");
    // The stream holds the messages a moment before their acks are counted and recorded.
    let newest = crate::common::events::read_events(&app.database_url).last().unwrap().id;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let published = app.metric("storefront_nats_published_total").await;
        let actors: Value = app.get_as("/api/v1/ops/actors", &admin).await.json().await.unwrap();
        let row =
            actors["actors"].as_array().unwrap().iter().find(|row| row["name"] == "nats_publisher").unwrap().clone();
        // Operators see it in the actors API: active, its position covering the whole
        // outbox (the unpublished users events included).
        let lag = app.metric("storefront_nats_publish_lag_events").await;
        if published == expected.len() as f64 && row["state"]["published_through"] == newest && lag == 0.0 {
            assert_eq!(row["state"]["role"], "active", "{row}");
            break;
        }
        assert!(published <= expected.len() as f64, "nothing counted twice: {published}");
        assert!(tokio::time::Instant::now() < deadline, "acks never counted: {published}, {row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_publisher_crashing_mid_stream_loses_and_duplicates_nothing(backend: Backend) {
    let Some(nats) = NatsServer::start().await else { return };
    let app = app_with_nats(backend, &nats).await;
    let (_, admin) = app.admin("root@example.com").await;

    let writes = async {
        for round in 0..6 {
            let names: Vec<String> = (0..8).map(|i| format!("Product {round}-{i}")).collect();
            join_all(names.iter().map(|name| create_product(&app, &admin, name))).await;
        }
    };
    let crashes = async {
        for _ in 0..3 {
            let crashed = app.chaos(json!({"actor": "nats_publisher", "fault": "panic"})).await;
            assert_eq!(crashed.status(), 500, "the publisher panicked, as asked");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    tokio::join!(writes, crashes);

    let expected = publishable(read_events(&app.database_url));
    assert_eq!(expected.len(), 48);
    assert_stream_holds_exactly(&nats, &expected).await;
    assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="nats_publisher"}"#).await, 3.0);
    assert_eq!(wait_for_nats_check(&app, "pass").await["output"], "publishing");

    // The worst moment for a crash: JetStream acknowledged everything, the position was not
    // yet recorded. The restarted publisher sends it all again, and the stream drops it.
    let published_before = app.metric("storefront_nats_published_total").await;
    let position = "SELECT published_through AS n FROM nats_publisher";
    let newest = expected.last().unwrap().id;
    assert_eq!(count(&app.database_url, position), newest);
    execute(&app.database_url, "UPDATE nats_publisher SET published_through = 0");
    assert_eq!(app.chaos(json!({"actor": "nats_publisher", "fault": "panic"})).await.status(), 500);
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while count(&app.database_url, position) != newest {
        assert!(tokio::time::Instant::now() < deadline, "the publisher did not resend from the recorded position");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_stream_holds_exactly(&nats, &expected).await;
    assert_eq!(app.metric("storefront_nats_published_total").await, published_before, "all were duplicates");
}

/// Runs `sql` with one timestamp bound (`$1` on PostgreSQL, `?` on SQLite).
fn execute_at(url: &str, sql: &str, at: chrono::NaiveDateTime) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).unwrap();
        diesel::sql_query(sql.replace("$1", "?")).bind::<Timestamp, _>(at).execute(&mut conn).unwrap();
    } else {
        let mut conn = PgConnection::establish(url).unwrap();
        diesel::sql_query(sql).bind::<Timestamp, _>(at).execute(&mut conn).unwrap();
    }
}

async fn a_nats_outage_keeps_the_backlog_in_the_outbox_until_it_is_published(backend: Backend) {
    let Some(mut nats) = NatsServer::start().await else { return };
    let app = TestApp::builder(backend)
        .setting("nats-url", &nats.url())
        .setting("janitor-interval-seconds", "1")
        .spawn()
        .await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let kettle = create_product(&app, &admin, "Kettle").await;
    deposit(&app, &admin, &alice_id, 10_000).await;
    place_order(&app, &alice, &kettle).await;
    assert_stream_holds_exactly(&nats, &publishable(read_events(&app.database_url))).await;

    nats.stop();
    let check = wait_for_nats_check(&app, "fail").await;
    assert!(check["output"].as_str().unwrap().contains("unreachable"), "{check}");
    for _ in 0..5 {
        place_order(&app, &alice, &kettle).await;
    }
    // An event older than the outbox retention that was never published, and an expired
    // idempotency key: once the key is gone the janitor has swept, and the event must stay.
    let two_days_ago = chrono::Utc::now().naive_utc() - chrono::Duration::hours(49);
    execute_at(
        &app.database_url,
        "INSERT INTO events (topic, kind, user_id, payload, created_at) \
         VALUES ('products', 'product.updated', NULL, '{\"note\":\"old\"}', $1)",
        two_days_ago,
    );
    execute_at(
        &app.database_url,
        "INSERT INTO idempotency_keys (user_id, scope, idempotency_key, fingerprint, response_status, response_body, created_at) \
         VALUES ('u', 'order', 'old', 'f', 201, '{}', $1)",
        two_days_ago,
    );
    let old_event = read_events(&app.database_url).last().unwrap().id;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while count(&app.database_url, "SELECT COUNT(*) AS n FROM idempotency_keys WHERE idempotency_key = 'old'") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the janitor did not sweep");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = publishable(read_events(&app.database_url));
    assert_eq!(expected.last().map(|event| event.id), Some(old_event), "the unpublished old event is kept");
    assert!(app.metric("storefront_nats_publish_lag_events").await >= 6.0, "five orders' events and the old one wait");
    assert_eq!(app.get("/readyz").await.status(), 200);

    nats.resume().await;
    assert_stream_holds_exactly(&nats, &expected).await;
    wait_for_nats_check(&app, "pass").await;
    // Published now, the old event is pruned like any other.
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while read_events(&app.database_url).iter().any(|event| event.id == old_event) {
        assert!(tokio::time::Instant::now() < deadline, "the published old event was not pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric("storefront_nats_publish_lag_events").await, 0.0);
}

fn execute(url: &str, sql: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).unwrap();
        diesel::sql_query(sql).execute(&mut conn).unwrap();
    } else {
        diesel::sql_query(sql).execute(&mut PgConnection::establish(url).unwrap()).unwrap();
    }
}

fn lease_holder(url: &str) -> Option<String> {
    #[derive(diesel::QueryableByName)]
    struct Holder {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        holder: Option<String>,
    }
    let sql = "SELECT holder FROM nats_publisher";
    let rows: Vec<Holder> = if let Some(path) = url.strip_prefix("sqlite://") {
        diesel::sql_query(sql).load(&mut SqliteConnection::establish(path).unwrap()).unwrap()
    } else {
        diesel::sql_query(sql).load(&mut PgConnection::establish(url).unwrap()).unwrap()
    };
    rows.into_iter().next().and_then(|row| row.holder)
}

/// Waits until a counter reaches `expected`, failing if it overshoots or never gets there.
async fn wait_for_metric(app: &TestApp, family: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let value = app.metric(family).await;
        if value == expected {
            return;
        }
        assert!(value < expected, "{family} overshot: {value} > {expected}");
        assert!(tokio::time::Instant::now() < deadline, "{family} stayed at {value}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(url: &str, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let rows: Vec<Count> = if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).unwrap();
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).unwrap();
        diesel::sql_query(sql).load(&mut conn).unwrap()
    } else {
        diesel::sql_query(sql).load(&mut PgConnection::establish(url).unwrap()).unwrap()
    };
    rows[0].n
}

async fn two_replicas_publish_each_event_once_and_the_survivor_takes_over(backend: Backend) {
    let Some(nats) = NatsServer::start().await else { return };
    // The database outlives both replicas, so one can stop while the other goes on.
    let database = TestDatabase::create(backend);
    let replica = || {
        TestApp::builder(backend)
            .database_url(&database.url())
            .setting("nats-url", &nats.url())
            // Long enough that only a handed-back lease changes hands while the test looks.
            .setting("nats-lease-seconds", "6")
            .spawn()
    };
    let first = replica().await;
    wait_for_nats_check(&first, "pass").await;
    let second = replica().await;
    let standby = wait_for_nats_check(&second, "pass").await;
    assert!(standby["output"].as_str().unwrap().starts_with("standby"), "{standby}");

    let (_, admin) = first.admin("root@example.com").await;
    let (alice_id, alice) = second.user("alice@example.com").await;
    let kettle = create_product(&first, &admin, "Kettle").await;
    deposit(&second, &admin, &alice_id, 10_000).await;
    join_all((0..6).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        place_order(app, &alice, &kettle)
    }))
    .await;
    let expected = publishable(read_events(&database.url()));
    assert_stream_holds_exactly(&nats, &expected).await;
    // The stream holds the messages a moment before their acks are counted.
    wait_for_metric(&first, "storefront_nats_published_total", expected.len() as f64).await;
    assert_eq!(second.metric("storefront_nats_published_total").await, 0.0, "the standby published nothing");

    // The leader shuts down and hands the lease back; the standby takes over.
    let leader = lease_holder(&database.url()).expect("the leader holds the lease");
    drop(first);
    assert_ne!(lease_holder(&database.url()), Some(leader), "the lease was handed back, not left to expire");
    for _ in 0..3 {
        place_order(&second, &alice, &kettle).await;
    }
    let all = publishable(read_events(&database.url()));
    assert_stream_holds_exactly(&nats, &all).await;
    wait_for_metric(&second, "storefront_nats_published_total", (all.len() - expected.len()) as f64).await;
    assert_eq!(wait_for_nats_check(&second, "pass").await["output"], "publishing");

    // A replica that took the lease died without a word: the survivor stands by until the
    // lease runs out, then publishes everything written meanwhile.
    // It renews every 2 s (a third of the lease): 10 s give it several tries to see the
    // other holder and stand by before the lease runs out, on a busy machine too.
    let expiry = chrono::Utc::now().naive_utc() + chrono::Duration::seconds(10);
    execute_at(
        &database.url(),
        "UPDATE nats_publisher SET holder = 'a-replica-that-died', lease_expires_at = $1",
        expiry,
    );
    wait_for_nats_output(&second, "standby").await;
    for _ in 0..3 {
        place_order(&second, &alice, &kettle).await;
    }
    assert_stream_holds_exactly(&nats, &publishable(read_events(&database.url()))).await;
    wait_for_nats_output(&second, "publishing").await;
}

/// Polls `/readyz` until the `nats` check's output starts with `output`.
async fn wait_for_nats_output(app: &TestApp, output: &str) {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let body: Value = app.get("/readyz").await.json().await.unwrap();
        if body["checks"]["nats"][0]["output"].as_str().is_some_and(|shown| shown.starts_with(output)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the nats check did not show {output:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
