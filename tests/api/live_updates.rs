//! Live updates over WebSocket, black-box: a real client against the real server on both
//! backends — what subscribers receive, what they may not see, resuming without gaps,
//! and how the service protects itself (bad input, origins, slow consumers, limits).

use std::time::Duration;

use crate::common::{
    events::{execute, read_events},
    ws::{ws_url, WsClient},
    Backend, TestApp, JWT_SECRET,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

on_both_backends!(
    subscribers_receive_product_order_and_account_events_at_once,
    each_user_sees_only_their_own_orders_and_balance,
    a_forbidden_topic_is_refused_and_the_connection_stays_open,
    since_replays_every_event_once_while_writers_keep_writing,
    a_pruned_since_is_reported_as_expired_and_the_stream_goes_on,
    bad_input_gets_errors_or_the_right_close_code,
    foreign_browser_origins_are_refused_before_the_upgrade,
    a_slow_consumer_is_cut_loose_while_a_fast_one_gets_everything,
    connections_close_when_the_token_expires,
    permissions_follow_the_user_deleted_and_demoted,
    hub_and_relay_panics_lose_no_event,
    connection_limits_refuse_before_the_upgrade,
    operators_see_restarts_on_the_ops_topic,
    a_subscriber_on_one_replica_sees_an_order_placed_on_another,
    subscribers_that_stop_answering_pings_are_closed,
    a_reading_subscriber_catches_up_after_a_burst_bigger_than_its_queue,
);

/// A poll interval far beyond the test's patience: only the in-process wake-up (and
/// NOTIFY across replicas) can deliver within a test's patience.
const NO_POLLING: &str = "60000";

async fn create_product(app: &TestApp, admin: &str, body: Value) -> String {
    let response = app.send_json(Method::POST, "/api/v1/products", admin, &body).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

async fn patch_product(app: &TestApp, admin: &str, id: &str, body: Value) {
    let response = app.send_json(Method::PATCH, &format!("/api/v1/products/{id}"), admin, &body).await;
    assert_eq!(response.status(), 200);
}

async fn deposit(app: &TestApp, admin: &str, user_id: &str, cents: i64) {
    let path = format!("/api/v1/accounts/{user_id}/deposits");
    let response = app.send_json(Method::POST, &path, admin, &json!({"amount_cents": cents})).await;
    assert_eq!(response.status(), 201);
}

async fn place_order(app: &TestApp, token: &str, product: &str, quantity: i64) -> Value {
    let body = json!({"items": [{"product_id": product, "quantity": quantity}]});
    let response = app.send_json(Method::POST, "/api/v1/orders", token, &body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

fn product_event_ids(app: &TestApp, after: i64) -> Vec<i64> {
    read_events(&app.database_url).into_iter().filter(|e| e.topic == "products" && e.id > after).map(|e| e.id).collect()
}

fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|event| event["id"].as_i64().unwrap()).collect()
}

async fn subscribers_receive_product_order_and_account_events_at_once(backend: Backend) {
    // With polling out of the picture, only the writer's own wake-up can deliver.
    let app = TestApp::builder(backend).setting("event-poll-interval-ms", NO_POLLING).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;

    let mut public = WsClient::connect(&app, None).await;
    let subscribed = public.subscribe(&["products"], None).await;
    assert_eq!(subscribed["topics"], json!(["products"]));
    let mut own = WsClient::connect(&app, Some(&alice)).await;
    own.subscribe(&["orders", "account"], None).await;

    let product = create_product(&app, &admin, json!({"name": "Kettle", "price_cents": 300, "stock": 5})).await;
    let created = public.next_event().await;
    assert_eq!((created["topic"].as_str(), created["kind"].as_str()), (Some("products"), Some("product.created")));
    assert_eq!(created["data"]["id"], product.as_str());
    assert_eq!(created["data"]["stock"], 5);
    assert!(created["at"].as_str().is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()));

    deposit(&app, &admin, &alice_id, 1000).await;
    let credited = own.next_event().await;
    assert_eq!((credited["topic"].as_str(), credited["kind"].as_str()), (Some("account"), Some("account.updated")));
    assert_eq!(credited["data"]["balance_cents"], 1000);

    let order = place_order(&app, &alice, &product, 2).await;
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let event = own.next_event().await;
        seen.push((event["topic"].as_str().unwrap().into(), event["kind"].as_str().unwrap().into()));
        if event["topic"] == "orders" {
            assert_eq!(event["data"]["id"], order["id"]);
            assert_eq!(event["data"]["total_cents"], 600);
        } else {
            assert_eq!(event["data"]["balance_cents"], 400);
        }
    }
    seen.sort();
    assert_eq!(seen, [("account".into(), "account.updated".into()), ("orders".into(), "order.created".into())]);
    let stock = public.next_event().await;
    assert_eq!((stock["kind"].as_str(), stock["data"]["stock"].as_i64()), (Some("product.updated"), Some(3)));
    assert!(stock["id"].as_i64() > created["id"].as_i64(), "ids grow");
}

async fn each_user_sees_only_their_own_orders_and_balance(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let (bob_id, bob) = app.user("bob@example.com").await;
    let product = create_product(&app, &admin, json!({"name": "Mug", "price_cents": 100, "stock": 50})).await;

    let mut bobs = WsClient::connect(&app, Some(&bob)).await;
    bobs.subscribe(&["orders", "account"], None).await;
    let mut admins = WsClient::connect(&app, Some(&admin)).await;
    admins.subscribe(&["orders", "account"], None).await;

    deposit(&app, &admin, &alice_id, 500).await;
    let alices_order = place_order(&app, &alice, &product, 1).await;
    // Something Bob may see, committed after Alice's events: if Bob's stream had carried
    // Alice's events, they would come first (ids are delivered in order).
    deposit(&app, &admin, &bob_id, 700).await;
    let first = bobs.next_event().await;
    assert_eq!((first["topic"].as_str(), first["data"]["user_id"].as_str()), (Some("account"), Some(bob_id.as_str())));
    assert_eq!(first["data"]["balance_cents"], 700);

    // An admin sees every order, but on `account` only their own balance (they have none moving).
    let seen = admins.next_event().await;
    assert_eq!((seen["topic"].as_str(), seen["data"]["id"].as_str()), (Some("orders"), alices_order["id"].as_str()));

    // A replay is filtered the same way: Bob resuming from the very start sees only his own.
    let mut resumed = WsClient::connect(&app, Some(&bob)).await;
    resumed.subscribe(&["orders", "account"], Some(0)).await;
    let first = resumed.next_event().await;
    assert_eq!((first["topic"].as_str(), first["data"]["user_id"].as_str()), (Some("account"), Some(bob_id.as_str())));
}

async fn a_forbidden_topic_is_refused_and_the_connection_stays_open(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (_, alice) = app.user("alice@example.com").await;

    let mut anonymous = WsClient::connect(&app, None).await;
    anonymous.send_json(json!({"op": "subscribe", "topics": ["products", "orders"]})).await;
    let refused = anonymous.next_json().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")));
    assert!(refused["message"].as_str().unwrap().contains("orders"), "{refused}");
    let subscribed = anonymous.next_json().await;
    assert_eq!(subscribed["topics"], json!(["products"]), "the allowed topic is still subscribed");

    let mut user = WsClient::connect(&app, Some(&alice)).await;
    user.send_json(json!({"op": "subscribe", "topics": ["ops"]})).await;
    assert_eq!(user.next_json().await["code"], "forbidden");
    user.subscribe(&["products"], None).await;

    create_product(&app, &admin, json!({"name": "Lamp", "price_cents": 900, "stock": 1})).await;
    assert_eq!(anonymous.next_event().await["kind"], "product.created");
    assert_eq!(user.next_event().await["kind"], "product.created");
}

async fn since_replays_every_event_once_while_writers_keep_writing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let product = create_product(&app, &admin, json!({"name": "Pen", "price_cents": 100, "stock": 0})).await;
    let start = product_event_ids(&app, 0)[0];

    let writer = {
        let (address, admin, product) = (app.address.clone(), admin.clone(), product.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for stock in 1..=60 {
                let response = client
                    .patch(format!("{address}/api/v1/products/{product}"))
                    .bearer_auth(&admin)
                    .json(&json!({"stock": stock}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    // Subscribers join while the writes are going on, each resuming from the start.
    let mut resumed = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect(&app, None).await;
        client.subscribe(&["products"], Some(start)).await;
        resumed.push(client);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    writer.await.unwrap();

    let expected = product_event_ids(&app, start);
    assert_eq!(expected.len(), 60);
    for client in &mut resumed {
        let received = ids(&client.events_through(*expected.last().unwrap()).await);
        assert_eq!(received, expected, "every event after `since`, in order, none twice");
    }
}

async fn a_pruned_since_is_reported_as_expired_and_the_stream_goes_on(backend: Backend) {
    let app = TestApp::builder(backend).setting("janitor-interval-seconds", "1").spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let product = create_product(&app, &admin, json!({"name": "Clock", "price_cents": 100, "stock": 1})).await;
    patch_product(&app, &admin, &product, json!({"stock": 2})).await;
    let old = product_event_ids(&app, 0);

    // Age the events past retention, as if a day had passed; the janitor prunes them.
    execute(&app.database_url, "UPDATE events SET created_at = '2000-01-01 00:00:00'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !product_event_ids(&app, 0).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the janitor did not prune");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut client = WsClient::connect(&app, None).await;
    client.send_json(json!({"op": "subscribe", "topics": ["products"], "since": old[0] - 1})).await;
    let subscribed = client.next_json().await;
    assert_eq!(subscribed["type"], "subscribed");
    let expired = client.next_json().await;
    assert_eq!((expired["type"].as_str(), expired["code"].as_str()), (Some("error"), Some("since_expired")));

    // Resuming from the newest pruned id loses nothing: no error, and live events follow.
    let mut caught_up = WsClient::connect(&app, None).await;
    caught_up.subscribe(&["products"], Some(*old.last().unwrap())).await;
    patch_product(&app, &admin, &product, json!({"stock": 3})).await;
    assert_eq!(client.next_event().await["data"]["stock"], 3);
    assert_eq!(caught_up.next_event().await["data"]["stock"], 3);
}

async fn bad_input_gets_errors_or_the_right_close_code(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = WsClient::connect(&app, None).await;
    for bad in ["not json", r#"{"op":"dance","topics":["products"]}"#, r#"{"op":"subscribe","topics":["nope"]}"#] {
        client.send(Message::Text(bad.into())).await;
        let answer = client.next_json().await;
        assert_eq!((answer["type"].as_str(), answer["code"].as_str()), (Some("error"), Some("bad_request")), "{bad}");
    }
    client.subscribe(&["products"], None).await;

    client.send(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(client.closed().await.0, 1003);

    let mut oversized = WsClient::connect(&app, None).await;
    let huge = format!(r#"{{"op":"subscribe","topics":["products"],"pad":"{}"}}"#, "x".repeat(5000));
    oversized.send(Message::Text(huge.into())).await;
    assert_eq!(oversized.closed().await.0, 1009);

    let plain = app.get("/api/v1/ws").await;
    crate::common::assert_problem(plain, 400).await;
}

async fn foreign_browser_origins_are_refused_before_the_upgrade(backend: Backend) {
    let app = TestApp::builder(backend).setting("cors-allowed-origins", "https://shop.example").spawn().await;
    let with_origin = |origin: &str| {
        let mut request = ws_url(&app, "").into_client_request().unwrap();
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
        request
    };
    let refused = WsClient::open(with_origin("https://evil.example")).await.err().expect("refused");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["status"], 403, "a problem body: {:?}", refused.body);

    let own = url::Url::parse(&app.address).unwrap();
    assert!(WsClient::open(with_origin(own.as_str().trim_end_matches('/'))).await.is_ok(), "own pages need no setting");
    assert!(WsClient::open(with_origin("https://shop.example")).await.is_ok(), "an allowed origin works");
    let mut other_port = own.clone();
    other_port.set_port(Some(1)).unwrap();
    let mut other_scheme = own.clone();
    other_scheme.set_scheme("https").unwrap();
    for refused in [other_port.as_str(), other_scheme.as_str(), "null", "http://shop.example"] {
        let origin = refused.trim_end_matches('/');
        assert_eq!(WsClient::open(with_origin(origin)).await.err().expect(origin).status, 403, "{origin}");
    }
}

async fn a_slow_consumer_is_cut_loose_while_a_fast_one_gets_everything(backend: Backend) {
    let app = TestApp::builder(backend).setting("ws-max-pending", "64").spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let product = create_product(&app, &admin, json!({"name": "Rug", "price_cents": 100, "stock": 0})).await;

    let mut slow = WsClient::connect_with_small_buffer(&app).await;
    slow.subscribe(&["products"], None).await;
    let mut fast = WsClient::connect(&app, None).await;
    // Live events are those after where the hub stood (which may lag the last commit).
    let start = fast.subscribe(&["products"], None).await["last_event_id"].as_i64().unwrap();
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            let event = fast.next_event().await;
            if event["data"]["name"] == "done" {
                return received;
            }
            received.push(event["id"].as_i64().unwrap());
        }
    });

    // Big events fill the slow client's buffers quickly; it reads nothing meanwhile.
    let description = "d".repeat(2000);
    let mut writes = 0;
    while app.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await < 1.0 {
        writes += 1;
        assert!(writes < 3000, "the slow consumer was never cut loose");
        patch_product(&app, &admin, &product, json!({"stock": writes, "description": description})).await;
    }
    patch_product(&app, &admin, &product, json!({"name": "done"})).await;

    let expected: Vec<i64> = product_event_ids(&app, start);
    let received = reader.await.unwrap();
    assert_eq!(received, expected[..expected.len() - 1], "the fast subscriber got every event, in order");
    assert_eq!(slow.closed().await, (1008, "slow consumer".to_owned()));
}

async fn connections_close_when_the_token_expires(backend: Backend) {
    let app = TestApp::spawn(backend).await;
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
    let mut client = WsClient::connect(&app, Some(&token)).await;
    client.subscribe(&["account"], None).await;
    assert_eq!(client.closed().await, (1008, "token expired".to_owned()));
    assert_eq!(app.metric(r#"storefront_ws_disconnects_total{reason="token_expired"}"#).await, 1.0);
}

async fn permissions_follow_the_user_deleted_and_demoted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, root) = app.admin("root@example.com").await;
    let (deputy_id, deputy) = app.admin("deputy@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;
    let product = create_product(&app, &root, json!({"name": "Fan", "price_cents": 100, "stock": 10})).await;
    deposit(&app, &root, &alice_id, 1000).await;

    let mut alices = WsClient::connect(&app, Some(&alice)).await;
    alices.subscribe(&["account"], None).await;
    let mut deputys = WsClient::connect(&app, Some(&deputy)).await;
    deputys.subscribe(&["ops", "orders", "account"], None).await;

    let demoted =
        app.send_json(Method::PATCH, &format!("/api/v1/users/{deputy_id}"), &root, &json!({"role": "user"})).await;
    assert_eq!(demoted.status(), 200);
    // A role change voids the user's tokens, and with them the connections they opened.
    assert_eq!(deputys.closed().await, (1008, "token revoked".to_owned()));
    let deputy = app.token_for("deputy@example.com").await;
    let mut deputys = WsClient::connect(&app, Some(&deputy)).await;
    deputys.send_json(json!({"op": "subscribe", "topics": ["ops", "orders", "account"]})).await;
    let refused = deputys.next_json().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("forbidden")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("ops"));
    assert_eq!(deputys.next_json().await["type"], "subscribed");
    place_order(&app, &alice, &product, 1).await;
    deposit(&app, &root, &deputy_id, 50).await;
    let next = deputys.next_event().await;
    assert_eq!(next["topic"], "account", "a demoted admin no longer sees others' orders: {next}");

    let deleted =
        app.request(Method::DELETE, &format!("/api/v1/users/{alice_id}")).bearer_auth(&root).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(alices.closed().await.0, 1008);
}

async fn hub_and_relay_panics_lose_no_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let product = create_product(&app, &admin, json!({"name": "Cup", "price_cents": 100, "stock": 0})).await;
    let start = *product_event_ids(&app, 0).last().unwrap();
    let mut client = WsClient::connect(&app, None).await;
    client.subscribe(&["products"], None).await;

    for stock in 1..=40 {
        if stock == 15 {
            assert_eq!(app.chaos(json!({"actor": "event_hub", "fault": "panic"})).await.status(), 500);
        }
        if stock == 30 {
            assert_eq!(app.chaos(json!({"actor": "event_relay", "fault": "panic"})).await.status(), 500);
        }
        patch_product(&app, &admin, &product, json!({"stock": stock})).await;
    }
    let expected = product_event_ids(&app, start);
    let received = ids(&client.events_through(*expected.last().unwrap()).await);
    assert_eq!(received, expected, "every event exactly once across the restart");
    assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="event_hub"}"#).await, 1.0);
    assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="event_relay"}"#).await, 1.0);
}

async fn connection_limits_refuse_before_the_upgrade(backend: Backend) {
    let app = TestApp::builder(backend)
        .setting("ws-max-connections", "3")
        .setting("ws-max-connections-per-user", "1")
        .spawn()
        .await;
    let (_, alice) = app.user("alice@example.com").await;
    let first = WsClient::connect(&app, Some(&alice)).await;
    let mut request = ws_url(&app, &format!("?access_token={alice}")).into_client_request().unwrap();
    request.headers_mut().remove("authorization");
    let refused = WsClient::open(request).await.err().expect("a second connection for one user is refused");
    assert_eq!(refused.status, 429);
    // Closing gives the user's connection back: the next one is admitted.
    first.close().await;
    let _first_again = WsClient::connect(&app, Some(&alice)).await;

    let _second = WsClient::connect(&app, None).await;
    let _third = WsClient::connect(&app, None).await;
    let mut request = ws_url(&app, "").into_client_request().unwrap();
    request.headers_mut().remove("authorization");
    assert_eq!(WsClient::open(request).await.err().expect("over the total").status, 503);
    assert_eq!(app.metric("storefront_ws_connections").await, 3.0);
}

async fn operators_see_restarts_on_the_ops_topic(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let mut ops = WsClient::connect(&app, Some(&admin)).await;
    ops.subscribe(&["ops"], None).await;
    assert_eq!(app.chaos(json!({"actor": "cache", "fault": "panic"})).await.status(), 500);
    let restarted = ops.next_event().await;
    assert_eq!((restarted["topic"].as_str(), restarted["kind"].as_str()), (Some("ops"), Some("actor.restarted")));
    assert_eq!(restarted["data"]["actor"], "cache");
    assert_eq!(restarted["data"]["count"], 1);
    assert!(restarted["data"]["reason"].as_str().unwrap().contains("fault injected"));
}

async fn a_subscriber_on_one_replica_sees_an_order_placed_on_another(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    // On PostgreSQL NOTIFY wakes the second replica, so it needs no polling at all; SQLite
    // replicas learn by polling.
    let poll = if backend == Backend::Postgres { NO_POLLING } else { "100" };
    let second = TestApp::builder(backend)
        .database_url(&first.database_url)
        .setting("event-poll-interval-ms", poll)
        .spawn()
        .await;
    let (_, admin) = first.admin("root@example.com").await;
    let (alice_id, alice) = first.user("alice@example.com").await;
    let product = create_product(&first, &admin, json!({"name": "Tent", "price_cents": 100, "stock": 3})).await;
    deposit(&first, &admin, &alice_id, 100).await;

    let mut watcher = WsClient::connect(&second, Some(&admin)).await;
    watcher.subscribe(&["orders"], None).await;
    let order = place_order(&first, &alice, &product, 1).await;
    let seen = watcher.next_event().await;
    assert_eq!((seen["kind"].as_str(), seen["data"]["id"].as_str()), (Some("order.created"), order["id"].as_str()));
}

async fn subscribers_that_stop_answering_pings_are_closed(backend: Backend) {
    // Two silent intervals close a connection: 6 s, so the answering subscriber below, which
    // reads only between two metric requests, is never that silent on a busy machine.
    let app = TestApp::builder(backend).setting("ws-ping-interval-seconds", "3").spawn().await;
    let mut answering = WsClient::connect(&app, None).await;
    answering.subscribe(&["products"], None).await;
    // This one never reads again, so it never answers the server's pings.
    let mut silent = WsClient::connect(&app, None).await;
    silent.subscribe(&["products"], None).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while app.metric(r#"storefront_ws_disconnects_total{reason="heartbeat"}"#).await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the silent subscriber was never closed");
        // Reading lets the client answer the pings that came meanwhile.
        let _ = tokio::time::timeout(Duration::from_millis(200), answering.next_json_or_ping()).await;
    }
    assert_eq!(app.metric("storefront_ws_connections").await, 1.0, "the answering subscriber stays");
    let (_, admin) = app.admin("root@example.com").await;
    create_product(&app, &admin, json!({"name": "Bell", "price_cents": 100, "stock": 1})).await;
    assert_eq!(answering.next_event().await["kind"], "product.created");
}

async fn a_reading_subscriber_catches_up_after_a_burst_bigger_than_its_queue(backend: Backend) {
    let app = TestApp::builder(backend).setting("ws-max-pending", "8").spawn().await;
    let mut client = WsClient::connect(&app, None).await;
    client.subscribe(&["products"], None).await;

    // Fifty events committed at once (another replica's bulk import, say): the relay hands
    // them over as one batch, far more than this subscriber's queue holds.
    let at = chrono::Utc::now().naive_utc().format("%Y-%m-%d %H:%M:%S%.6f");
    let rows: Vec<String> = (0..50)
        .map(|i| {
            format!("('products', 'product.updated', NULL, '{{\"id\":\"bulk-{i}\",\"stock\":{i}}}', NULL, '{at}')")
        })
        .collect();
    execute(
        &app.database_url,
        &format!("INSERT INTO events (topic, kind, user_id, payload, origin, created_at) VALUES {}", rows.join(", ")),
    );
    let expected = product_event_ids(&app, 0);
    assert_eq!(expected.len(), 50);
    let received = ids(&client.events_through(*expected.last().unwrap()).await);
    assert_eq!(received, expected, "every event, in order, none twice, on the same connection");
    assert_eq!(app.metric(r#"storefront_ws_disconnects_total{reason="slow_consumer"}"#).await, 0.0);
}

// PostgreSQL only: there, writers commit concurrently and ids are drawn before commit, so
// a relay tailing `id > last` must not read past an id still to commit (the outbox
// horizon), or it skips an id that commits after a higher one.
on_postgres_only!(postgres_commit_order: an_event_that_commits_while_a_later_write_waits_is_delivered_first_and_nothing_is_skipped);

async fn an_event_that_commits_while_a_later_write_waits_is_delivered_first_and_nothing_is_skipped() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Number {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // No polling: what delivers is the replica's wake-up after its own write, and the
    // horizon looking again while the open transaction runs.
    let app =
        TestApp::builder(crate::common::Backend::Postgres).setting("event-poll-interval-ms", NO_POLLING).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let mut live = WsClient::connect(&app, None).await;
    live.subscribe(&["products"], None).await;
    let product = create_product(&app, &admin, json!({"name": "Lamp", "price_cents": 900, "stock": 1})).await;
    let created = live.next_event().await;
    let snapshot: Value = app.get(&format!("/api/v1/products/{product}")).await.json().await.unwrap();

    // Another writer of the outbox (an operator, another service) appends and stays open.
    let mut held = PgConnection::establish(&app.database_url).unwrap();
    held.batch_execute("BEGIN").unwrap();
    let held_id = diesel::sql_query(
        "INSERT INTO events (topic, kind, payload, created_at) \
         VALUES ('products', 'product.updated', $1, now()) RETURNING id AS n",
    )
    .bind::<diesel::sql_types::Text, _>(snapshot.to_string())
    .get_result::<Number>(&mut held)
    .unwrap()
    .n;

    // A later write through the service, while that transaction is open.
    let writer = {
        let (address, admin, product) = (app.address.clone(), admin.clone(), product.clone());
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .patch(format!("{address}/api/v1/products/{product}"))
                .bearer_auth(&admin)
                .json(&json!({"stock": 7}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        })
    };
    // It either finishes (overtaking the open transaction) or waits for it on a lock.
    let mut watcher = PgConnection::establish(&app.database_url).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result::<Number>(&mut watcher)
        .unwrap()
        .n;
        if writer.is_finished() || waiting > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the write neither finished nor waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.batch_execute("COMMIT").unwrap();
    writer.await.unwrap();

    let patched = product_event_ids(&app, held_id);
    assert_eq!(patched.len(), 1, "the write appended one event after the open transaction's");
    let received = live.events_through(patched[0]).await;
    assert_eq!(ids(&received), [held_id, patched[0]], "both, in id order, none skipped");
    assert_eq!(received[1]["data"]["stock"], 7);

    // A subscriber resuming from before both is replayed the same.
    let mut resumed = WsClient::connect(&app, None).await;
    resumed.subscribe(&["products"], Some(created["id"].as_i64().unwrap())).await;
    assert_eq!(ids(&resumed.events_through(patched[0]).await), [held_id, patched[0]]);
}

// PostgreSQL only: the horizon waits for the transactions that may hold an undelivered
// event id, and only for those: a session left idle in a transaction that appended
// nothing (a console someone forgot, a long report) must not stall every subscriber.
on_postgres_only!(postgres_idle_transaction: a_transaction_left_open_that_appends_nothing_holds_up_no_delivery);

async fn a_transaction_left_open_that_appends_nothing_holds_up_no_delivery() {
    use diesel::{connection::SimpleConnection, Connection, PgConnection};
    // No polling: what delivers is the replica's wake-up after its own write.
    let app =
        TestApp::builder(crate::common::Backend::Postgres).setting("event-poll-interval-ms", NO_POLLING).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let mut live = WsClient::connect(&app, None).await;
    live.subscribe(&["products"], None).await;

    // A transaction that holds a transaction id, wrote a row, and then sits idle.
    let mut idle = PgConnection::establish(&app.database_url).unwrap();
    idle.batch_execute("BEGIN; SELECT pg_current_xact_id(); UPDATE users SET name = name").unwrap();

    let product = create_product(&app, &admin, json!({"name": "Lamp", "price_cents": 900, "stock": 1})).await;
    let created = live.next_event().await;
    assert_eq!(created["data"]["id"], product.as_str(), "delivered while the idle transaction is still open");
    idle.batch_execute("ROLLBACK").unwrap();
}
