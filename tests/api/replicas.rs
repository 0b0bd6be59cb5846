//! Two replicas on one database: each learns of the other's writes from the outbox, so
//! its cache never serves a change-blind answer for long (well under the cache TTL).

use std::time::Duration;

use crate::common::{Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(a_replica_sees_the_other_replicas_writes_through_its_cache);

/// Polls until `check` holds, failing after a deadline far below the 60 s cache TTL.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_replica_sees_the_other_replicas_writes_through_its_cache(backend: Backend) {
    let first = TestApp::spawn(backend).await;
    let second = TestApp::builder(backend).database_url(&first.database_url).spawn().await;
    let (_, admin) = first.admin("root@example.com").await;
    let (alice_id, alice) = first.user("alice@example.com").await;

    let created = first
        .send_json(
            Method::POST,
            "/api/v1/products",
            &admin,
            &json!({"name": "Kettle", "price_cents": 2000, "stock": 5}),
        )
        .await;
    let path = format!("/api/v1/products/{}", created.json::<Value>().await.unwrap()["id"].as_str().unwrap());
    // The second replica caches the product and Alice.
    assert_eq!(second.get(&path).await.json::<Value>().await.unwrap()["price_cents"], 2000);
    assert_eq!(second.get_as("/api/v1/users/me", &alice).await.status(), 200);
    assert_eq!(second.get(&path).await.status(), 200);

    let patched = first.send_json(Method::PATCH, &path, &admin, &json!({"price_cents": 2500})).await;
    assert_eq!(patched.status(), 200);
    eventually("the price change reaching the second replica", || async {
        second.get(&path).await.json::<Value>().await.unwrap()["price_cents"] == 2500
    })
    .await;

    let deleted =
        first.request(Method::DELETE, &format!("/api/v1/users/{alice_id}")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    eventually("Alice's token dying on the second replica", || async {
        second.get_as("/api/v1/users/me", &alice).await.status() == 401
    })
    .await;
}
