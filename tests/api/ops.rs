//! Operators watching the service heal: the actors API and restart ledger (admin only),
//! the ops dashboard's assets, and the database circuit breaker through a real PostgreSQL
//! outage on a private cluster.

use std::time::Duration;

use crate::common::{assert_problem, postgres_server::PostgresServer, Backend, TestApp, EVERY_ACTOR};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    actors_api_is_for_admins_only,
    actors_api_shows_every_actor_alive_with_its_queue_and_own_state,
    a_chaos_panic_moves_the_restart_count_and_lands_in_the_ledger_newest_first,
    the_metrics_summary_counts_application_traffic,
);

async fn actors(app: &TestApp, admin: &str) -> Value {
    let response = app.get_as("/api/v1/ops/actors", admin).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn row<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["actors"].as_array().unwrap().iter().find(|row| row["name"] == name).unwrap_or_else(|| {
        panic!("no row for {name}: {report}");
    })
}

/// Polls the actors API until `done` holds, failing after a generous deadline.
async fn actors_until(app: &TestApp, admin: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = actors(app, admin).await;
        if done(&report) {
            return report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {report:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn actors_api_is_for_admins_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, user) = app.user("plain@example.com").await;
    for path in ["/api/v1/ops/actors", "/api/v1/ops/restarts", "/api/v1/ops/metrics"] {
        let anonymous = app.get(path).await;
        assert!(anonymous.headers().contains_key("www-authenticate"), "{path}");
        assert_problem(anonymous, 401).await;
        assert_problem(app.get_as(path, "not-a-token").await, 401).await;
        assert_problem(app.get_as(path, &user).await, 403).await;
    }
}

async fn actors_api_shows_every_actor_alive_with_its_queue_and_own_state(backend: Backend) {
    let app = TestApp::builder(backend).setting("janitor-interval-seconds", "1").spawn().await;
    let (_, admin) = app.admin("ops@example.com").await;

    let report = actors_until(&app, &admin, "every actor alive, janitor and relay at work", |report| {
        EVERY_ACTOR.iter().all(|name| {
            let instances = &row(report, name)["instances"];
            instances["configured"].as_u64() >= Some(1) && instances["alive"] == instances["configured"]
        }) && !row(report, "janitor")["state"]["last_success_at"].is_null()
            && !row(report, "event_relay")["state"]["last_success_at"].is_null()
    })
    .await;

    assert_eq!(report["chaos_enabled"], true, "the test server sets CHAOS_TOKEN");
    for actor in report["actors"].as_array().unwrap() {
        assert!(["async", "sync_pool", "breaker"].contains(&actor["kind"].as_str().unwrap()), "{actor}");
        assert!(actor["restarts"]["count"].is_u64(), "{actor}");
        assert!(actor["state"].is_object(), "{actor}");
        let supervision = &actor["supervision"];
        if actor["kind"] == "breaker" {
            assert!(supervision.is_null(), "the breaker is not an actor: {actor}");
            continue;
        }
        assert_eq!(supervision["state"], "running", "{actor}");
        assert_eq!(supervision["restarts_in_window"], 0, "{actor}");
        assert_eq!(
            (supervision["max_restarts"].as_u64(), supervision["window_seconds"].as_u64()),
            (Some(10), Some(60))
        );
        assert!(supervision["next_restart_at"].is_null(), "{actor}");
    }
    let executor = row(&report, "db_executor");
    assert_eq!(executor["kind"], "sync_pool");
    assert_eq!(executor["instances"]["configured"], 2, "the test server runs two DbExecutor threads");
    assert_eq!(executor["queue"]["capacity"], 128, "64 × DB_WORKERS admission slots");
    assert!(executor["queue"]["in_flight"].is_u64());
    assert!(row(&report, "password_hasher")["queue"]["capacity"].as_u64().unwrap() > 0);
    assert_eq!(row(&report, "cache")["kind"], "async");
    assert!(row(&report, "cache")["queue"].is_null(), "the cache has no admission of its own");
    assert_eq!(row(&report, "db_breaker")["state"]["state"], "closed");
    assert_eq!(row(&report, "db_breaker")["state"]["failure_threshold"], 5);
    assert_eq!(row(&report, "health")["state"]["probe"]["status"], "pass");
    assert!(row(&report, "event_relay")["state"]["last_event_id"].is_i64());
    assert!(row(&report, "janitor")["state"]["runs"].as_u64().unwrap() >= 1);
    let limiter = &row(&report, "rate_limiter")["state"];
    assert!(limiter["keys_tracked"].as_u64().unwrap() >= 1, "this very request");
    assert_eq!(limiter["mode"], "local", "no RATE_LIMIT_REDIS_URL");
    assert_eq!(limiter["redis"]["configured"], false);
    for event in ["asked", "granted", "settled", "recalled", "expired", "refused_locally"] {
        assert!(limiter["leases"][event].is_u64(), "lease traffic: {limiter}");
    }

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for sample in
        ["storefront_event_relay_last_success_timestamp_seconds", "storefront_janitor_last_success_timestamp_seconds"]
    {
        assert!(crate::common::metric_value(&metrics, sample) > 1.0e9, "{sample} is a recent unix time");
    }
    assert!(metrics.contains("storefront_event_relay_lag_seconds "), "the relay lag is exported");
}

async fn a_chaos_panic_moves_the_restart_count_and_lands_in_the_ledger_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("ops@example.com").await;
    let before = actors(&app, &admin).await;
    assert_eq!(row(&before, "cache")["restarts"]["count"], 0);
    assert!(row(&before, "cache")["restarts"]["last_at"].is_null());
    let ledger: Value = app.get_as("/api/v1/ops/restarts", &admin).await.json().await.unwrap();
    assert_eq!(ledger["restarts"], json!([]));

    assert_eq!(app.chaos(json!({"actor": "cache", "fault": "panic"})).await.status(), 500);
    let after = actors_until(&app, &admin, "the cache restart is counted", |report| {
        row(report, "cache")["restarts"]["count"] == 1 && row(report, "cache")["instances"]["alive"] == 1
    })
    .await;
    let cache = &row(&after, "cache")["restarts"];
    assert!(cache["last_reason"].as_str().unwrap().contains("fault injected"), "{cache}");
    assert!(cache["last_at"].is_string(), "{cache}");
    assert_eq!(row(&after, "rate_limiter")["restarts"]["count"], 0, "only the crashed actor restarted");

    assert_eq!(app.chaos(json!({"actor": "janitor", "fault": "panic"})).await.status(), 500);
    assert_eq!(app.chaos(json!({"actor": "db_executor", "fault": "panic"})).await.status(), 500);
    actors_until(&app, &admin, "the DbExecutor thread is replaced and counted", |report| {
        let executor = row(report, "db_executor");
        executor["restarts"]["count"] == 1 && executor["instances"]["alive"] == 2
    })
    .await;

    let ledger: Value = app.get_as("/api/v1/ops/restarts", &admin).await.json().await.unwrap();
    let order: Vec<&str> =
        ledger["restarts"].as_array().unwrap().iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert_eq!(order, ["db_executor", "janitor", "cache"], "newest first: {ledger}");
    for restart in ledger["restarts"].as_array().unwrap() {
        assert!(restart["at"].is_string() && restart["reason"].is_string(), "{restart}");
    }
}

async fn the_metrics_summary_counts_application_traffic(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, admin) = app.admin("ops@example.com").await;
    let read = || async { app.get_as("/api/v1/ops/metrics", &admin).await.json::<Value>().await.unwrap() };
    let before = read().await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/v1/products").await.status(), 200);
    }
    assert_eq!(app.get("/api/v1/products/not-a-uuid").await.status(), 404);
    app.get("/readyz").await;
    let after = read().await;
    let delta = |field: &str| after[field].as_u64().unwrap() - before[field].as_u64().unwrap();
    // The four requests above (the summary reads themselves and probes are not counted).
    assert_eq!(delta("requests_total"), 4, "{before} → {after}");
    assert_eq!(delta("errors_total"), 0);
    assert_eq!(delta("latency_count"), 4);
    let buckets = after["latency_buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.windows(2).all(|w| w[0]["le"].as_f64() < w[1]["le"].as_f64()));
    assert_eq!(after["db_breaker_state"], 0.0);
    assert!(after["ws_connections"].is_null() || after["ws_connections"].is_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_under_a_strict_policy() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let page = app.get("/ops/").await;
    assert_eq!(page.status(), 200);
    let header = |response: &reqwest::Response, name: &str| {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("script-src 'self'") && policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "no inline script or eval: {policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing from another origin");

    for (path, kind) in [("/ops/app.js", "text/javascript"), ("/ops/app.css", "text/css")] {
        let asset = app.get(path).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert!(header(&asset, "content-type").starts_with(kind), "{path}");
    }
    let bare = app.client.get(app.url("/ops")).send().await.unwrap();
    assert_eq!(bare.url().path(), "/ops/", "/ops redirects to the page");

    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in ["/ops/", "/api/v1/ops/actors", "/api/v1/ops/restarts", "/api/v1/ops/metrics"] {
        assert!(document["paths"][path]["get"].is_object(), "{path} is documented");
    }
    let statuses = document["paths"]["/api/v1/ops/actors"]["get"]["responses"].as_object().unwrap();
    assert!(["200", "401", "403"].iter().all(|status| statuses.contains_key(*status)), "{statuses:?}");
}

/// The breaker through a real outage: open (fast 503 with Retry-After, without touching
/// the pool), half-open after the cooldown, closed once PostgreSQL is back, with metrics
/// and the readiness check following along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_breaker_opens_in_an_outage_and_closes_when_postgres_returns() {
    if !PostgresServer::available() {
        return;
    }
    let server = tokio::task::spawn_blocking(PostgresServer::start).await.unwrap();
    let app = TestApp::builder(Backend::Postgres)
        .database_url(&server.url())
        .setting("db-breaker-failures", "3")
        .setting("db-breaker-cooldown-ms", "1000")
        .spawn()
        .await;
    let (_, admin) = app.admin("ops@example.com").await;
    let database_request = || app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": 0}));
    assert_eq!(database_request().await.status(), 204);

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("storefront_db_breaker_state 0"), "closed, and exported from the start");
    for to in ["open", "half_open", "closed"] {
        assert!(metrics.contains(&format!("storefront_db_breaker_transitions_total{{to=\"{to}\"}} 0")), "{to}");
    }
    let ready = app.wait_for_readiness(200, Duration::from_secs(5)).await;
    assert_eq!(ready["checks"]["database:breaker"][0]["status"], "pass", "{ready}");
    // Caches the admin, so the actors API still answers them while the database is away.
    assert_eq!(row(&actors(&app, &admin).await, "db_breaker")["state"]["state"], "closed");

    server.stop();

    let report = app.wait_for_readiness(503, Duration::from_secs(5)).await;
    assert_eq!(report["checks"]["database:responseTime"][0]["status"], "fail", "{report}");
    let report = wait_for_breaker(&app, "fail").await;
    assert_eq!(report["checks"]["database:breaker"][0]["observedValue"], "open", "{report}");
    assert_eq!(app.metric("storefront_db_breaker_state").await, 1.0);
    assert!(app.metric(r#"storefront_db_breaker_transitions_total{to="open"}"#).await >= 1.0);

    // Open: refused at once, before the pool is asked.
    let shed_before = app.metric(r#"storefront_db_shed_total{reason="breaker_open"}"#).await;
    let refused = database_request().await;
    assert!(refused.headers().get("retry-after").is_some_and(|v| v.to_str().unwrap().parse::<u64>().unwrap() >= 1));
    let problem = assert_problem(refused, 503).await;
    assert!(problem["detail"].as_str().unwrap().contains("circuit breaker"), "{problem}");
    assert!(app.metric(r#"storefront_db_shed_total{reason="breaker_open"}"#).await > shed_before);
    let report = actors(&app, &admin).await;
    assert_ne!(row(&report, "db_breaker")["state"]["state"], "closed", "{report}");

    // After the cooldown the breaker goes half-open and one trial (the health probe, on its
    // own connection) decides: against the stopped server it fails, and the breaker opens
    // again. Requests meanwhile are refused, never let through to wait on the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.metric(r#"storefront_db_breaker_transitions_total{to="half_open"}"#).await < 1.0 {
        assert_eq!(database_request().await.status(), 503, "never a success while the database is down");
        assert!(tokio::time::Instant::now() < deadline, "the breaker never went half-open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.metric(r#"storefront_db_breaker_transitions_total{to="open"}"#).await >= 2.0, "the trial failed");

    server.start_again();

    let report = app.wait_for_readiness(200, Duration::from_secs(10)).await;
    assert_eq!(report["checks"]["database:breaker"][0]["status"], "pass", "{report}");
    assert_eq!(app.metric("storefront_db_breaker_state").await, 0.0);
    assert!(app.metric(r#"storefront_db_breaker_transitions_total{to="closed"}"#).await >= 1.0);
    assert_eq!(database_request().await.status(), 204, "recovered without a restart");
    let report = actors(&app, &admin).await;
    let breaker = &row(&report, "db_breaker")["state"];
    assert_eq!(breaker["state"], "closed", "{breaker}");
    assert_eq!(breaker["consecutive_failures"], 0, "{breaker}");
}

async fn wait_for_breaker(app: &TestApp, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let report: Value = app.request(Method::GET, "/readyz").send().await.unwrap().json().await.unwrap();
        if report["checks"]["database:breaker"][0]["status"] == status {
            return report;
        }
        assert!(tokio::time::Instant::now() < deadline, "breaker check never turned {status}: {report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
