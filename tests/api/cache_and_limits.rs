//! The Cache and RateLimiter actors as clients and operators see them: single-flight
//! loads, read-your-writes, rate-limit headers and refusals, and both actors surviving
//! panics.

use crate::common::{assert_problem, one_connection::OneConnection, Backend, TestApp};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    concurrent_misses_on_one_product_make_one_database_load,
    every_read_after_a_write_returns_sees_that_write,
    misses_are_cached_briefly_and_hits_are_counted,
    order_placement_invalidates_the_products_it_touches,
    cache_actor_panic_is_survived_and_reads_keep_working,
    reads_work_with_the_cache_disabled,
);

async fn product(app: &TestApp, admin: &str, name: &str) -> String {
    let created = app
        .send_json(Method::POST, "/api/v1/products", admin, &json!({"name": name, "price_cents": 500, "stock": 100}))
        .await;
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

const PRODUCT_LOADS: &str = r#"storefront_cache_loads_total{cache="products"}"#;

async fn concurrent_misses_on_one_product_make_one_database_load(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let id = product(&app, &admin, "Lamp").await;
    let path = format!("/api/v1/products/{id}");
    let loads_before = app.metric(PRODUCT_LOADS).await;

    let responses = join_all((0..100).map(|_| app.get(&path))).await;
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        bodies.push(response.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "all 100 answers are identical");
    assert_eq!(app.metric(PRODUCT_LOADS).await - loads_before, 1.0, "one database load for 100 concurrent misses");
    let coalesced = app.metric(r#"storefront_cache_requests_total{cache="products",result="coalesced"}"#).await;
    let hits = app.metric(r#"storefront_cache_requests_total{cache="products",result="hit"}"#).await;
    assert_eq!(coalesced + hits, 99.0);
}

async fn every_read_after_a_write_returns_sees_that_write(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let id = product(&app, &admin, "Clock").await;
    let path = format!("/api/v1/products/{id}");
    let done = std::sync::atomic::AtomicBool::new(false);

    // Readers keep the key hot (and loads in flight) while the writer changes it.
    let readers = join_all((0..4).map(|_| async {
        let mut reads = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(app.get(&path).await.status(), 200);
            reads += 1;
        }
        reads
    }));
    let writer = async {
        for round in 1..=60 {
            let price = 1000 + round;
            let patched = app.send_json(Method::PATCH, &path, &admin, &json!({"price_cents": price})).await;
            assert_eq!(patched.status(), 200);
            let read: Value = app.get(&path).await.json().await.unwrap();
            assert_eq!(read["price_cents"], price, "round {round}: the read after the PATCH sees it");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (reads, ()) = tokio::join!(readers, writer);
    assert!(reads.iter().sum::<i32>() > 0);
}

async fn misses_are_cached_briefly_and_hits_are_counted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let missing = format!("/api/v1/products/{}", uuid::Uuid::now_v7());
    assert_problem(app.get(&missing).await, 404).await;
    assert_problem(app.get(&missing).await, 404).await;
    assert_eq!(app.metric(PRODUCT_LOADS).await, 1.0, "the 404 was remembered");

    let id = product(&app, &admin, "Vase").await;
    let path = format!("/api/v1/products/{id}");
    for _ in 0..3 {
        assert_eq!(app.get(&path).await.status(), 200);
    }
    assert_eq!(app.metric(PRODUCT_LOADS).await, 2.0);
    assert_eq!(app.metric(r#"storefront_cache_requests_total{cache="products",result="hit"}"#).await, 3.0);
    assert_eq!(app.metric(r#"storefront_cache_entries{cache="products"}"#).await, 2.0);
}

async fn order_placement_invalidates_the_products_it_touches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let (buyer_id, buyer) = app.user("buyer@example.com").await;
    let id = product(&app, &admin, "Chair").await;
    let path = format!("/api/v1/products/{id}");
    let deposit = app
        .send_json(
            Method::POST,
            &format!("/api/v1/accounts/{buyer_id}/deposits"),
            &admin,
            &json!({"amount_cents": 10_000}),
        )
        .await;
    assert_eq!(deposit.status(), 201);
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap()["stock"], 100);

    let order = app
        .send_json(Method::POST, "/api/v1/orders", &buyer, &json!({"items": [{"product_id": id, "quantity": 3}]}))
        .await;
    assert_eq!(order.status(), 201);
    let order_id = order.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap()["stock"], 97);

    let cancel = app.send_json(Method::POST, &format!("/api/v1/orders/{order_id}/cancel"), &buyer, &json!({})).await;
    assert_eq!(cancel.status(), 200);
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap()["stock"], 100);
}

async fn cache_actor_panic_is_survived_and_reads_keep_working(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("root@example.com").await;
    let id = product(&app, &admin, "Rug").await;
    let path = format!("/api/v1/products/{id}");
    assert_eq!(app.get(&path).await.status(), 200);

    assert_problem(app.chaos(json!({"actor": "cache", "fault": "panic"})).await, 500).await;
    assert_eq!(app.metric_reaching(r#"storefront_actor_restarts_total{actor="cache"}"#, 1.0).await, 1.0);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["actors:restarts"][0]["componentId"], "cache");

    // The fresh cache starts empty and serves again.
    let loads = app.metric(PRODUCT_LOADS).await;
    assert_eq!(app.get(&path).await.status(), 200);
    assert_eq!(app.get(&path).await.status(), 200);
    assert_eq!(app.metric(PRODUCT_LOADS).await - loads, 1.0);
    assert_eq!(app.get_as("/api/v1/users/me", &admin).await.status(), 200, "user lookups go through it too");
}

async fn reads_work_with_the_cache_disabled(backend: Backend) {
    let app = TestApp::builder(backend).setting("cache-capacity", "0").spawn().await;
    let (_, admin) = app.admin("root@example.com").await;
    let id = product(&app, &admin, "Desk").await;
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/api/v1/products/{id}")).await.status(), 200);
    }
    assert_eq!(app.metric(PRODUCT_LOADS).await, 0.0);
    assert_problem(app.chaos(json!({"actor": "cache", "fault": "panic"})).await, 422).await;
}

/// A server whose default policy allows 1 request per second with a burst of 10. The
/// timing rules themselves are tested on the pure code with an injected clock
/// (`domain::rate_limit`, `actors::rate_limiter`); these tests assert what a client sees,
/// with bounds that hold however slowly the machine runs.
async fn limited(extra: &[(&str, &str)]) -> TestApp {
    let mut builder =
        TestApp::builder(Backend::Sqlite).setting("rate-limit-rps", "1").setting("rate-limit-burst", "10");
    for (flag, value) in extra {
        builder = builder.setting(flag, value);
    }
    builder.spawn().await
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Sends requests until one is refused; returns how many passed before it, and the refusal.
async fn spend(app: &TestApp, request: impl Fn() -> reqwest::RequestBuilder) -> (usize, reqwest::Response) {
    for admitted in 0..60 {
        let response = request().send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return (admitted, response);
        }
        assert_eq!(response.status(), 200, "{}", app.address);
        // An unread body makes the client drop the connection instead of reusing it.
        response.bytes().await.unwrap();
    }
    panic!("60 requests and no refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_policy_admits_the_burst_then_refuses_with_a_wait() {
    let app = limited(&[]).await;
    let path = "/api/v1/products";
    // The first answer the limiter decided (one let through unasked, failing open on a busy
    // machine, carries no RateLimit header and spent nothing).
    let first = loop {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
        if response.headers().contains_key("ratelimit") {
            break response;
        }
    };
    assert_eq!(header(&first, "ratelimit-policy"), "\"default\";q=10;w=10");
    assert!(header(&first, "ratelimit").starts_with("\"default\";r=9;t="), "{}", header(&first, "ratelimit"));

    let (admitted, refused) = spend(&app, || app.request(Method::GET, path)).await;
    assert!(admitted + 1 >= 10, "the whole burst passes first: {admitted}");
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"default\";q=10;w=10");
    assert!(header(&refused, "ratelimit").starts_with("\"default\";r=0;t="));
    assert_problem(refused, 429).await;
    assert_eq!(app.metric(r#"storefront_rate_limited_total{policy="default"}"#).await, 1.0);

    for probe in ["/livez", "/readyz", "/metrics"] {
        for _ in 0..15 {
            let response = app.get(probe).await;
            assert_eq!(response.status(), 200, "{probe} is never limited");
            assert!(response.headers().get("ratelimit").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_do_not_share_a_bucket_and_untrusted_forwarding_is_ignored() {
    let app = limited(&[]).await;
    let (_, alice) = app.user("alice@example.com").await;
    let (_, bob) = app.user("bob@example.com").await;
    let products = || app.request(Method::GET, "/api/v1/products");
    let (alice_admitted, _) = spend(&app, || products().bearer_auth(&alice)).await;
    assert!(alice_admitted >= 10, "alice spends her own bucket");
    let (bob_admitted, _) = spend(&app, || products().bearer_auth(&bob)).await;
    assert!(bob_admitted >= 10, "bob has one of his own");
    // One hand-held connection, so each request carries the spoofed header exactly as
    // written and the remaining counts below come from one worker's view.
    let mut connection = OneConnection::open(&app).await;
    let mut anonymous = 0;
    loop {
        let status = connection.get("/api/v1/products", &[("x-forwarded-for", "203.0.113.7")]).await.status;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(status, 200);
        anonymous += 1;
        assert!(anonymous <= 60, "60 anonymous requests and no refusal");
    }
    assert!(anonymous >= 10, "anonymous callers share the peer address");
    let spent_at = std::time::Instant::now();
    // What the limiter decided for a spoofed address (a request it let through unasked,
    // failing open on a busy machine, carries no RateLimit header and says nothing).
    let mut remaining = Vec::new();
    for _ in 0..20 {
        let answer = connection.get("/api/v1/products", &[("x-forwarded-for", "198.51.100.9")]).await;
        remaining.extend(answer.remaining());
        if remaining.len() == 3 {
            break;
        }
    }
    assert!(!remaining.is_empty(), "the limiter decided none of 20 requests");
    // A bucket of its own would start at 9 left; the spent peer bucket refills one a second.
    let refilled = spent_at.elapsed().as_secs() + 1;
    assert!(
        remaining.iter().all(|left| *left <= refilled),
        "an untrusted X-Forwarded-For is ignored: {remaining:?} left after {refilled} s of refill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_forward_the_client_address() {
    let app = limited(&[("trusted-proxies", "127.0.0.1")]).await;
    let app = &app;
    let from = |client: &'static str| {
        move || app.request(Method::GET, "/api/v1/products").header("x-forwarded-for", format!("{client}, 127.0.0.1"))
    };
    assert!(spend(app, from("203.0.113.7")).await.0 >= 10);
    assert!(spend(app, from("203.0.113.8")).await.0 >= 10, "a second client has a bucket of its own");
    assert_eq!(app.metric(r#"storefront_rate_limited_total{policy="default"}"#).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_policy_limits_sign_ins_per_address() {
    let app = TestApp::builder(Backend::Sqlite).setting("auth-rate-limit-per-minute", "3").spawn().await;
    // Sign-ins are decided by one limiter shard for the whole replica, a hop away from the
    // other workers: on a busy machine an attempt may be let through unasked (failing
    // open, without RateLimit headers), which spends nothing. The limiter's own decisions
    // admit exactly three, then refuse.
    let mut decided = 0;
    let refused = loop {
        let response = app.login("nobody@example.com", "whatever-password").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert_eq!(response.status(), 401);
        if response.headers().contains_key("ratelimit") {
            decided += 1;
            assert_eq!(header(&response, "ratelimit-policy"), "\"auth\";q=3;w=60");
        }
        assert!(decided <= 3, "a fourth attempt was admitted");
    };
    assert_eq!(decided, 3, "three attempts, then the refusal");
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=20).contains(&retry_after), "one attempt refills in 20 s: {retry_after}");
    assert_problem(refused, 429).await;
    assert_eq!(app.metric(r#"storefront_rate_limited_total{policy="auth"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_survives_a_panic_and_keeps_limiting() {
    let app = limited(&[]).await;
    assert_problem(app.chaos(json!({"actor": "rate_limiter", "fault": "panic"})).await, 500).await;
    assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="rate_limiter"}"#).await, 1.0);
    let (admitted, refused) = spend(&app, || app.request(Method::GET, "/api/v1/products")).await;
    assert!(admitted >= 10);
    assert_problem(refused, 429).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_keys_stay_under_the_cap_when_clients_churn() {
    let app = limited(&[("trusted-proxies", "127.0.0.1"), ("rate-limit-max-keys", "50")]).await;
    for n in 0..200 {
        let response = app
            .request(Method::GET, "/api/v1/products")
            .header("x-forwarded-for", format!("10.0.{}.{}", n / 256, n % 256))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "each new client gets its burst");
    }
    // Each per-worker limiter shard keeps its share of the cap (50 / workers). The gauge is
    // reported on the limiter's tick, not per request: wait for the first report.
    let tracked = app.metric_reaching("storefront_rate_limit_keys", 1.0).await;
    assert!(tracked > 0.0 && tracked <= 50.0, "{tracked} buckets tracked, the cap is 50");
}
