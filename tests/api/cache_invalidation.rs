//! What the cache drops after a write, as a client sees it: a write the server gave up
//! waiting for (504) that commits later is seen by the next reads, not served stale until
//! the cache TTL, and every kind of write is seen by the writer's very next read.
//!
//! A write times out only on a replica with a short database timeout, so that replica does
//! nothing else that must finish within it: the setup goes through a second replica.

use std::time::Duration;

use crate::common::{assert_problem, db_lock::HeldLock, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    a_product_change_that_timed_out_is_read_once_it_commits,
    an_order_cancel_that_timed_out_restores_the_stock_reads_show,
    the_writers_next_read_sees_each_kind_of_write,
);

/// Far beyond any wait below: a stale entry would outlive the test.
const CACHE_TTL_SECONDS: &str = "3600";
/// Short, so that a write blocked behind the test's lock times out well inside SQLite's
/// 5 s busy timeout (and commits once the lock goes). Only the replica under test has it.
const DB_TIMEOUT_MS: &str = "1000";
/// How long reads are retried, and a change is waited for: far above any commit and relay
/// delay, far below the cache TTL.
const PATIENCE: Duration = Duration::from_secs(30);

/// Two replicas on one database: `subject`, with the short database timeout, serves the
/// reads and the write that times out; `setup`, with the default one, makes everything
/// else, so that no ordinary request has to finish within the short timeout on a busy
/// machine.
struct Replicas {
    setup: TestApp,
    subject: TestApp,
}

async fn replicas(backend: Backend) -> Replicas {
    let setup = TestApp::builder(backend).setting("cache-ttl-seconds", CACHE_TTL_SECONDS).spawn().await;
    let subject = TestApp::builder(backend)
        .database_url(&setup.database_url)
        .setting("db-timeout-ms", DB_TIMEOUT_MS)
        .setting("cache-ttl-seconds", CACHE_TTL_SECONDS)
        .spawn()
        .await;
    Replicas { setup, subject }
}

async fn product(app: &TestApp, admin: &str, stock: i64) -> String {
    let created = app
        .send_json(
            Method::POST,
            "/api/v1/products",
            admin,
            &json!({"name": "Lamp", "price_cents": 500, "stock": stock}),
        )
        .await;
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

/// A read that was served. A replica with a short database timeout sheds a read that
/// waited too long (503) or ran too long (504) on a busy machine; that read served
/// nothing, so it is asked again, as a client would.
async fn read(app: &TestApp, path: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = app.get(path).await;
        let status = response.status().as_u16();
        if status == 200 {
            return response.json().await.unwrap();
        }
        assert!([503, 504].contains(&status), "GET {path}: {status}");
        assert!(tokio::time::Instant::now() < deadline, "GET {path} was shed for {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `path` until `field` shows `expected`; fails after `PATIENCE`.
async fn read_until(app: &TestApp, path: &str, field: &str, expected: &Value) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = read(app, path).await;
        if &seen[field] == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still shows {field} = {} after {PATIENCE:?}",
            seen[field]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a write that the test's lock holds up until the server gives up waiting (504).
/// One the server withdrew before it started (503: it waited in the queue, nothing ran)
/// is sent again.
async fn timed_out_write(app: &TestApp, method: Method, path: &str, token: &str, body: &Value) -> Value {
    for _ in 0..10 {
        let response = app.send_json(method.clone(), path, token, body).await;
        if response.status() != 503 {
            return assert_problem(response, 504).await;
        }
    }
    panic!("{method} {path} was withdrawn ten times and never started");
}

async fn a_product_change_that_timed_out_is_read_once_it_commits(backend: Backend) {
    let Replicas { setup, subject } = replicas(backend).await;
    let (_, admin) = setup.admin("root@example.com").await;
    let id = product(&setup, &admin, 10).await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(read(&subject, &path).await["price_cents"], 500);

    let lock = HeldLock::row(&subject.database_url, "products", &id);
    let patched = timed_out_write(&subject, Method::PATCH, &path, &admin, &json!({"price_cents": 700})).await;
    assert_eq!(patched["type"], "urn:storefront:problem:outcome-unknown");
    // A reader in between caches what is committed so far: the old price.
    assert_eq!(read(&subject, &path).await["price_cents"], 500);
    lock.release();

    read_until(&subject, &path, "price_cents", &json!(700)).await;
}

async fn an_order_cancel_that_timed_out_restores_the_stock_reads_show(backend: Backend) {
    let Replicas { setup, subject } = replicas(backend).await;
    let (_, admin) = setup.admin("root@example.com").await;
    let (buyer_id, buyer) = setup.user("buyer@example.com").await;
    setup.deposit(&admin, &buyer_id, 10_000).await;
    let id = product(&setup, &admin, 10).await;
    let path = format!("/api/v1/products/{id}");
    let order = setup
        .send_json(Method::POST, "/api/v1/orders", &buyer, &json!({"items": [{"product_id": id, "quantity": 3}]}))
        .await;
    assert_eq!(order.status(), 201);
    let order_id = order.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(read(&subject, &path).await["stock"], 7, "cached after the order");

    let lock = HeldLock::row(&subject.database_url, "products", &id);
    timed_out_write(&subject, Method::POST, &format!("/api/v1/orders/{order_id}/cancel"), &buyer, &json!({})).await;
    assert_eq!(read(&subject, &path).await["stock"], 7, "nothing committed yet");
    lock.release();

    read_until(&subject, &path, "stock", &json!(10)).await;
    let cancelled: Value = setup.get_as(&format!("/api/v1/orders/{order_id}"), &buyer).await.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "the cancel that timed out did commit");
}

async fn the_writers_next_read_sees_each_kind_of_write(backend: Backend) {
    let app = TestApp::builder(backend).setting("cache-ttl-seconds", CACHE_TTL_SECONDS).spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let (alice_id, alice) = app.user("alice@example.com").await;

    let id = product(&app, &admin, 5).await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(read(&app, &path).await["stock"], 5);

    for round in 1..=20 {
        let stock = 100 + round;
        let patched = app.send_json(Method::PATCH, &path, &admin, &json!({"stock": stock})).await;
        assert_eq!(patched.status(), 200);
        assert_eq!(read(&app, &path).await["stock"], stock, "round {round}");
    }

    let me = format!("/api/v1/users/{alice_id}");
    assert_eq!(app.get_as("/api/v1/users/me", &alice).await.json::<Value>().await.unwrap()["name"], "Test User");
    let renamed = app.send_json(Method::PATCH, &me, &alice, &json!({"name": "Alice"})).await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(app.get_as("/api/v1/users/me", &alice).await.json::<Value>().await.unwrap()["name"], "Alice");

    let deleted = app.request(Method::DELETE, &path).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_problem(app.get(&path).await, 404).await;

    let gone = app.request(Method::DELETE, &me).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(gone.status(), 204);
    assert_problem(app.get_as("/api/v1/users/me", &alice).await, 401).await;
}
