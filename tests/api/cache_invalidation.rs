//! What the cache drops after a write, as a client sees it: a write the server gave up
//! waiting for (504) that commits later is seen by the next reads, not served stale until
//! the cache TTL, and every kind of write is seen by the writer's very next read.

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
/// Long enough for an ordinary request on a busy machine, short enough that a write
/// blocked behind the test's lock times out well inside SQLite's 5 s busy timeout.
const DB_TIMEOUT_MS: &str = "1000";

async fn app_with_short_database_timeout(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .setting("db-timeout-ms", DB_TIMEOUT_MS)
        .setting("cache-ttl-seconds", CACHE_TTL_SECONDS)
        .spawn()
        .await
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

async fn read(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

/// Reads `path` until `field` shows `expected`; fails after a bound far above any commit
/// and relay delay, and far below the cache TTL.
async fn read_until(app: &TestApp, path: &str, field: &str, expected: &Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = read(app, path).await;
        if &seen[field] == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} still shows {field} = {} after 30 s", seen[field]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_product_change_that_timed_out_is_read_once_it_commits(backend: Backend) {
    let app = app_with_short_database_timeout(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let id = product(&app, &admin, 10).await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(read(&app, &path).await["price_cents"], 500);

    let lock = HeldLock::row(&app.database_url, "products", &id);
    let patched = app.send_json(Method::PATCH, &path, &admin, &json!({"price_cents": 700})).await;
    assert_eq!(assert_problem(patched, 504).await["type"], "urn:storefront:problem:outcome-unknown");
    // A reader in between caches what is committed so far: the old price.
    assert_eq!(read(&app, &path).await["price_cents"], 500);
    lock.release();

    read_until(&app, &path, "price_cents", &json!(700)).await;
}

async fn an_order_cancel_that_timed_out_restores_the_stock_reads_show(backend: Backend) {
    let app = app_with_short_database_timeout(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    app.deposit(&admin, &buyer_id, 10_000).await;
    let id = product(&app, &admin, 10).await;
    let path = format!("/api/v1/products/{id}");
    let order = app
        .send_json(Method::POST, "/api/v1/orders", &buyer, &json!({"items": [{"product_id": id, "quantity": 3}]}))
        .await;
    assert_eq!(order.status(), 201);
    let order_id = order.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(read(&app, &path).await["stock"], 7, "cached after the order");

    let lock = HeldLock::row(&app.database_url, "products", &id);
    let cancel = app.send_json(Method::POST, &format!("/api/v1/orders/{order_id}/cancel"), &buyer, &json!({})).await;
    assert_problem(cancel, 504).await;
    assert_eq!(read(&app, &path).await["stock"], 7, "nothing committed yet");
    lock.release();

    read_until(&app, &path, "stock", &json!(10)).await;
    let cancelled: Value = app.get_as(&format!("/api/v1/orders/{order_id}"), &buyer).await.json().await.unwrap();
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
