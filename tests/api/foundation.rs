//! The service foundation as a client and an operator see it: probes, metrics, request
//! ids, security headers, problem+json for every error, admission control, and actors
//! that survive panics.

use std::time::Duration;

use crate::common::{assert_problem, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

on_both_backends!(
    probes_answer_and_readiness_reports_its_checks,
    request_ids_are_kept_when_safe_and_replaced_otherwise,
    every_response_carries_security_headers,
    framework_errors_are_problems,
    metrics_count_requests_by_route_pattern,
    metrics_token_guards_metrics_when_set,
    openapi_document_lists_the_routes,
    db_executor_panic_answers_500_and_the_pool_keeps_its_size,
    health_actor_panic_is_survived_and_recorded,
    saturated_database_pool_sheds_with_503,
    slow_database_requests_time_out_with_503_or_504,
    cors_allows_only_listed_origins,
);

async fn probes_answer_and_readiness_reports_its_checks(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let live = app.get("/livez").await;
    assert_eq!(live.status(), 200);

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.headers()["content-type"], "application/health+json");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "pass");
    assert_eq!(body["checks"]["database:responseTime"][0]["status"], "pass");
    assert_eq!(body["checks"]["db_executor:workers"][0]["observedValue"], 2);
}

async fn request_ids_are_kept_when_safe_and_replaced_otherwise(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let kept = app.request(Method::GET, "/livez").header("x-request-id", "abc-123_X.y").send().await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123_X.y");

    for unsafe_id in ["has space", "semi;colon", &"a".repeat(65)] {
        let replaced = app.request(Method::GET, "/livez").header("x-request-id", unsafe_id).send().await.unwrap();
        let id = replaced.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, unsafe_id);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "fresh ids are UUIDs: {id}");
    }

    let first = app.get("/livez").await.headers()["x-request-id"].clone();
    let second = app.get("/livez").await.headers()["x-request-id"].clone();
    assert_ne!(first, second, "each request gets its own id");

    let problem = app.request(Method::GET, "/no/such/route").header("x-request-id", "trace-me").send().await.unwrap();
    let body = assert_problem(problem, 404).await;
    assert_eq!(body["request_id"], "trace-me");
}

async fn every_response_carries_security_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (path, json) in [("/livez", true), ("/no/such/route", true), ("/metrics", false)] {
        let response = app.get(path).await;
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(
            headers.get("content-security-policy").map(|v| v.to_str().unwrap()),
            json.then_some("default-src 'none'; frame-ancestors 'none'"),
            "{path}"
        );
    }
}

async fn framework_errors_are_problems(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let body = assert_problem(app.get("/no/such/route").await, 404).await;
    assert_eq!(body["instance"], "/no/such/route");

    let wrong_method = app.request(Method::DELETE, "/livez").send().await.unwrap();
    assert_eq!(wrong_method.headers()["allow"], "GET");
    assert_problem(wrong_method, 405).await;

    let chaos = |body: reqwest::Body| {
        app.request(Method::POST, "/ops/chaos")
            .bearer_auth(crate::common::CHAOS_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let malformed = assert_problem(chaos("{not json".into()).await.unwrap(), 400).await;
    assert!(malformed["detail"].as_str().unwrap().contains("JSON"));

    let wrong_type = chaos(r#"{"actor": 7, "fault": "stall"}"#.into()).await.unwrap();
    assert_problem(wrong_type, 400).await;

    let unknown_field = chaos(r#"{"actor": "db_executor", "fault": "stall", "extra": 1}"#.into()).await.unwrap();
    let body = assert_problem(unknown_field, 422).await;
    assert_eq!(body["errors"][0]["field"], "extra");

    let missing_field = chaos(r#"{"actor": "db_executor"}"#.into()).await.unwrap();
    let body = assert_problem(missing_field, 422).await;
    assert_eq!(body["errors"][0]["field"], "fault");

    let huge = format!(r#"{{"actor": "db_executor", "fault": "stall", "pad": "{}"}}"#, "x".repeat(70 * 1024));
    assert_problem(chaos(huge.into()).await.unwrap(), 413).await;

    let not_json = app
        .request(Method::POST, "/ops/chaos")
        .bearer_auth(crate::common::CHAOS_TOKEN)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, 415).await;
}

async fn metrics_count_requests_by_route_pattern(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for _ in 0..3 {
        app.get("/livez").await;
    }
    app.get("/no/such/route/42").await;

    let text = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        crate::common::metric_value(
            &text,
            r#"storefront_http_requests_total{method="GET",route="/livez",status="200"}"#
        ),
        3.0
    );
    assert_eq!(
        crate::common::metric_value(
            &text,
            r#"storefront_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        1.0
    );
    assert!(!text.contains("/no/such/route/42"), "raw paths never become labels");
    assert!(text.contains("storefront_http_request_duration_seconds_bucket"));
    // The health probe may be mid-query: the gauge exists, its value is whatever is in flight.
    assert!(text.lines().any(|line| line.starts_with("storefront_db_in_flight ")));
}

async fn metrics_token_guards_metrics_when_set(backend: Backend) {
    let app = TestApp::builder(backend).setting("metrics-token", "metrics-secret-0123456789").spawn().await;
    let anonymous = app.get("/metrics").await;
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_problem(anonymous, 401).await;

    let wrong = app.request(Method::GET, "/metrics").bearer_auth("nope").send().await.unwrap();
    assert_problem(wrong, 401).await;

    let right = app.request(Method::GET, "/metrics").bearer_auth("metrics-secret-0123456789").send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("storefront_http_requests_total"));
}

async fn openapi_document_lists_the_routes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/ops/chaos",
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/users/me",
        "/api/v1/users",
        "/api/v1/users/{id}",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing from OpenAPI");
    }
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for method in ["get", "patch", "delete"] {
        assert!(document["paths"]["/api/v1/users/{id}"][method].is_object(), "{method} /api/v1/users/{{id}}");
    }
}

async fn db_executor_panic_answers_500_and_the_pool_keeps_its_size(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // More panics than there are workers: a pool that lost threads would be empty.
    for round in 1..=5 {
        let response = app.chaos(json!({"actor": "db_executor", "fault": "panic"})).await;
        let body = assert_problem(response, 500).await;
        assert!(!body["detail"].as_str().unwrap().contains("panic"), "no internals leak: {body}");
        assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="db_executor"}"#).await, f64::from(round));
    }

    assert_eq!(app.metric("storefront_db_workers_alive").await, 2.0);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "pass");
    let ledger = &ready["checks"]["actors:restarts"][0];
    assert_eq!(ledger["componentId"], "db_executor");
    assert_eq!(ledger["observedValue"], 5);

    // Both workers serve at once: two stalls overlap and both succeed.
    let stall = || app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": 200}));
    let (first, second) = tokio::join!(stall(), stall());
    assert_eq!(first.status(), 204);
    assert_eq!(second.status(), 204);
}

async fn health_actor_panic_is_survived_and_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_problem(app.chaos(json!({"actor": "health", "fault": "panic"})).await, 500).await;

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "the restarted Health actor answers");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["actors:restarts"][0]["componentId"], "health");
    assert_eq!(app.metric(r#"storefront_actor_restarts_total{actor="health"}"#).await, 1.0);

    // It keeps probing after the restart: a second crash is recorded too.
    assert_problem(app.chaos(json!({"actor": "health", "fault": "panic"})).await, 500).await;
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(body["checks"]["actors:restarts"][0]["observedValue"], 2);
}

/// Waits until the start-up's own database work (the relay's first read) is done, so that
/// only the test's requests hold the pool: the relay polls only once a minute in these
/// tests (nothing is written, so nothing wakes it sooner), and the janitor's first run is
/// minutes away.
async fn pool_left_to_the_test(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.metric("storefront_event_relay_last_success_timestamp_seconds").await == 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the relay's first read never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while app.metric("storefront_db_in_flight").await > 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the start-up's database work never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn saturated_database_pool_sheds_with_503(backend: Backend) {
    // The second stall waits for the first; both must finish within the database timeout.
    let app = TestApp::builder(backend)
        .setting("db-workers", "1")
        .setting("db-queue-depth", "2")
        .setting("db-timeout-ms", "30000")
        .setting("event-poll-interval-ms", "60000")
        .spawn()
        .await;
    // Long enough that the two slots are still held when the third request comes, however
    // slowly the machine runs between the two.
    let stall = || app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": 5000}));
    pool_left_to_the_test(&app).await;
    let occupy = async {
        let (a, b) = tokio::join!(stall(), stall());
        (a.status(), b.status())
    };
    let probe = async {
        // Wait until both stalls hold the admission slots, then one more is refused.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while app.metric("storefront_db_in_flight").await < 2.0 {
            assert!(tokio::time::Instant::now() < deadline, "stalls were never admitted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let shed = app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": 0})).await;
        assert_eq!(shed.headers()["retry-after"], "1");
        assert_problem(shed, 503).await;
    };
    let (statuses, ()) = tokio::join!(occupy, probe);
    assert_eq!(statuses, (reqwest::StatusCode::NO_CONTENT, reqwest::StatusCode::NO_CONTENT));
    assert!(app.metric(r#"storefront_db_shed_total{reason="saturated"}"#).await >= 1.0);
    assert_eq!(app.get("/readyz").await.status(), 200, "a busy pool is not an unready one");
}

async fn slow_database_requests_time_out_with_503_or_504(backend: Backend) {
    let app = TestApp::builder(backend)
        .setting("db-workers", "1")
        .setting("db-timeout-ms", "2000")
        .setting("event-poll-interval-ms", "60000")
        .spawn()
        .await;
    let stall = |millis: u64| app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": millis}));
    pool_left_to_the_test(&app).await;

    // The first request starts and overruns: it may have changed something, so 504. (One
    // withdrawn before it started, after waiting in the queue on a busy machine, answers
    // 503: nothing ran, so it is sent again.) It goes on holding the only worker for far
    // longer than the timeout.
    let mut overran = stall(20_000).await;
    for _ in 0..5 {
        if overran.status() != 503 {
            break;
        }
        overran = stall(20_000).await;
    }
    let body = assert_problem(overran, 504).await;
    assert_eq!(body["type"], "urn:storefront:problem:outcome-unknown");
    // The second waits behind it and is withdrawn before it starts: nothing ran, so 503.
    let withdrawn = stall(0).await;
    assert_eq!(withdrawn.headers()["retry-after"], "1");
    assert_problem(withdrawn, 503).await;
    assert_eq!(app.metric(r#"storefront_db_shed_total{reason="overran"}"#).await, 1.0);
    assert!(app.metric(r#"storefront_db_shed_total{reason="timeout"}"#).await >= 1.0);
}

async fn cors_allows_only_listed_origins(backend: Backend) {
    let app = TestApp::builder(backend).setting("cors-allowed-origins", "https://shop.example").spawn().await;
    let allowed = app.request(Method::GET, "/livez").header("origin", "https://shop.example").send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://shop.example");
    let exposed = allowed.headers()["access-control-expose-headers"].to_str().unwrap().to_owned();
    for header in ["x-request-id", "ratelimit", "etag", "location", "retry-after"] {
        assert!(exposed.contains(header), "{header} is readable by browser code: {exposed}");
    }

    // Another origin is served without CORS headers, so a browser will not hand it the body.
    let foreign = app.request(Method::GET, "/livez").header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(foreign.status(), 200);
    assert!(foreign.headers().get("access-control-allow-origin").is_none());

    let preflight = app
        .request(Method::OPTIONS, "/livez")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.headers().get("access-control-allow-origin").is_none());
    assert!(preflight.status().is_client_error());
    assert_problem(preflight, 400).await;
}
