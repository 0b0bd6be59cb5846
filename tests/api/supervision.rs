//! Restart intensity and backoff, seen from outside: an actor made to panic on every
//! message (`/ops/chaos` `crash_loop`) goes past `ACTOR_MAX_RESTARTS` and backs off; the
//! actors API and the `ops` topic say so, readiness fails while an actor requests cannot
//! do without is backing off, requests fail fast or take their fallback, and once the
//! crash loop is cleared the actor runs a whole window without a panic and recovers.
//!
//! The servers here allow no restart at once (`ACTOR_MAX_RESTARTS=0`), so the first panic
//! already backs off, and count restarts over 2 s, so recovery comes soon after the loop
//! is cleared. Every step polls for its outcome with a generous deadline: how quickly the
//! machine runs decides only how long a test takes.

use std::time::Duration;

use reqwest::Response;
use serde_json::{json, Value};

use crate::common::{
    assert_problem,
    shop::{json_of, product},
    ws::WsClient,
    Backend, TestApp,
};

on_both_backends!(a_crash_looping_database_pool_backs_off_fails_readiness_and_requests_fast_then_recovers);

/// Long enough for backoffs that doubled up to their 30 s cap, plus the window.
const RECOVERY: Duration = Duration::from_secs(90);
const BACKING_OFF: Duration = Duration::from_secs(30);
const WINDOW_SECONDS: &str = "2";

async fn spawn(backend: Backend) -> TestApp {
    TestApp::builder(backend)
        .setting("actor-max-restarts", "0")
        .setting("actor-restart-window-seconds", WINDOW_SECONDS)
        .spawn()
        .await
}

async fn chaos(app: &TestApp, actor: &str, fault: &str) {
    let response = app.chaos(json!({"actor": actor, "fault": fault})).await;
    assert_eq!(response.status(), 204, "{fault} {actor}");
}

/// The `supervision` of `actor`'s row in the actors API, or `None` when the API could not
/// answer (the rate limiter's fail-open budget spent: only when the limiter is the one
/// backing off).
async fn supervision(app: &TestApp, admin: &str, actor: &str) -> Option<Value> {
    let response = app.get_as("/api/v1/ops/actors", admin).await;
    if response.status() == 503 {
        return None;
    }
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    let row = report["actors"].as_array().unwrap().iter().find(|row| row["name"] == actor).cloned();
    Some(row.unwrap_or_else(|| panic!("no row for {actor}: {report}"))["supervision"].clone())
}

/// Polls until `done` holds, doing `nudge` (a request that reaches the actor) each round.
async fn until<F, N>(within: Duration, what: &str, mut nudge: N, mut done: impl FnMut() -> F) -> Value
where
    F: std::future::Future<Output = Option<Value>>,
    N: AsyncFnMut(),
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        nudge().await;
        if let Some(outcome) = done().await {
            return outcome;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn state_is(app: &TestApp, admin: &str, actor: &str, state: &str) -> Option<Value> {
    supervision(app, admin, actor).await.filter(|supervision| supervision["state"] == state)
}

/// The next `ops` event of `kind` about `actor`, skipping every other.
async fn ops_event(ops: &mut WsClient, kind: &str, actor: &str) -> Value {
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "no {kind} for {actor} on the ops topic");
        let message = ops.next_json_within(left).await;
        if message["type"] == "event" && message["kind"] == kind && message["data"]["actor"] == actor {
            return message["data"].clone();
        }
    }
}

fn assert_supervision_settings(supervision: &Value) {
    assert_eq!(supervision["max_restarts"], 0, "{supervision}");
    assert_eq!(supervision["window_seconds"], 2, "{supervision}");
    assert!(supervision["restarts_in_window"].is_u64(), "{supervision}");
    let next = &supervision["next_restart_at"];
    assert!(next.is_null() || next.as_str().is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()));
}

/// A database request answered by a pool that panics on everything: a 500 (a worker
/// panicked on it) or a 503 (refused), never a hang (the client gives up after 30 s and
/// fails the test). Returns whether it was refused at once because every worker waits out
/// its backoff.
async fn refused_fast(response: Response) -> bool {
    let status = response.status().as_u16();
    assert!(status == 500 || status == 503, "a crash-looping pool answers 500 or 503, got {status}");
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let problem = assert_problem(response, status).await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    status == 503 && detail.contains("restarting after repeated crashes") && retry_after.is_some_and(|s| s >= 1)
}

async fn a_crash_looping_database_pool_backs_off_fails_readiness_and_requests_fast_then_recovers(backend: Backend) {
    let app = spawn(backend).await;
    // Signed in (and cached) before the pool goes down, so the actors API keeps answering.
    let (_, admin) = app.admin("ops@example.com").await;
    let mut ops = WsClient::connect(&app, Some(&admin)).await;
    ops.subscribe(&["ops"], None).await;
    assert_eq!(
        state_is(&app, &admin, "db_executor", "running").await.map(|s| s["restarts_in_window"].clone()),
        Some(json!(0))
    );

    chaos(&app, "db_executor", "crash_loop").await;
    let database_request = || async { app.get("/api/v1/products").await };
    let backing_off = until(
        BACKING_OFF,
        "the pool backs off",
        async || {
            refused_fast(database_request().await).await;
        },
        || state_is(&app, &admin, "db_executor", "backing_off"),
    )
    .await;
    assert_supervision_settings(&backing_off);
    assert!(backing_off["restarts_in_window"].as_u64() >= Some(1), "{backing_off}");

    let announced = ops_event(&mut ops, "actor.backing_off", "db_executor").await;
    assert_eq!(announced["state"], "backing_off", "{announced}");
    assert_supervision_settings(&announced);

    let readiness = until(
        BACKING_OFF,
        "readiness names the backing-off pool",
        async || {},
        || async {
            let response = app.get("/readyz").await;
            let status = response.status().as_u16();
            let report: Value = response.json().await.unwrap();
            let pool = report["checks"]["actors:supervision"]
                .as_array()
                .and_then(|checks| checks.iter().find(|check| check["componentId"] == "db_executor").cloned());
            (status == 503).then_some(pool).flatten()
        },
    )
    .await;
    assert_eq!(readiness["status"], "fail", "{readiness}");

    // While every worker waits out its backoff, requests are refused at once.
    until(
        BACKING_OFF,
        "a request is refused at once while every worker backs off",
        async || {},
        || async { refused_fast(database_request().await).await.then_some(Value::Null) },
    )
    .await;
    assert!(app.metric(r#"storefront_db_shed_total{reason="backing_off"}"#).await >= 1.0);
    assert_eq!(app.metric(r#"storefront_actor_backing_off{actor="db_executor"}"#).await, 1.0);

    chaos(&app, "db_executor", "clear").await;
    let recovered = ops_event(&mut ops, "actor.recovered", "db_executor").await;
    assert_eq!(recovered["state"], "running", "{recovered}");
    assert!(recovered["next_restart_at"].is_null(), "{recovered}");
    let running =
        until(RECOVERY, "the pool runs again", async || {}, || state_is(&app, &admin, "db_executor", "running")).await;
    assert_supervision_settings(&running);
    app.wait_for_readiness(200, RECOVERY).await;
    assert_eq!(database_request().await.status(), 200, "served again");
    assert_eq!(app.metric(r#"storefront_actor_backing_off{actor="db_executor"}"#).await, 0.0);
}

/// The cache is not needed to serve: while it backs off, reads bypass it, and readiness
/// only warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_cache_is_bypassed_while_it_backs_off_and_readiness_only_warns() {
    let app = spawn(Backend::Sqlite).await;
    let (_, admin) = app.admin("ops@example.com").await;
    let id = product(&app, &admin, "Lamp", 1200, 3).await;
    let path = format!("/api/v1/products/{id}");
    let read = || async {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "reads are served whatever the cache does");
        assert_eq!(json_of(response).await["id"], id.as_str());
    };
    read().await;

    chaos(&app, "cache", "crash_loop").await;
    let bypassed = r#"storefront_cache_bypass_total{cache="products",reason="backing_off"}"#;
    until(BACKING_OFF, "reads bypass the backing-off cache and readiness warns", read, || async {
        let response = app.get("/readyz").await;
        let ready = response.status() == 200;
        let report: Value = response.json().await.unwrap();
        let check = report["checks"]["actors:supervision"]
            .as_array()
            .and_then(|checks| checks.iter().find(|check| check["componentId"] == "cache").cloned());
        let warns = check.is_some_and(|check| check["status"] == "warn");
        if !(ready && warns && app.metric(bypassed).await >= 1.0) {
            return None;
        }
        state_is(&app, &admin, "cache", "backing_off").await
    })
    .await;

    chaos(&app, "cache", "clear").await;
    until(RECOVERY, "the cache recovers", async || {}, || state_is(&app, &admin, "cache", "running")).await;
    let hits = r#"storefront_cache_requests_total{cache="products",result="hit"}"#;
    let before = app.metric(hits).await;
    until(RECOVERY, "reads are cached again", read, || async {
        (app.metric(hits).await > before).then_some(Value::Null)
    })
    .await;
}

/// Health is needed to serve: readiness fails while it backs off, and passes again once
/// it has recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_health_actor_fails_readiness_until_it_recovers() {
    let app = spawn(Backend::Sqlite).await;
    let (_, admin) = app.admin("ops@example.com").await;
    chaos(&app, "health", "crash_loop").await;
    // Health panics on its own probe ticks; /readyz answers at once throughout.
    let report = app.wait_for_readiness(503, BACKING_OFF).await;
    assert!(
        report["checks"]["health:actor"][0]["status"] == "fail"
            || report["checks"]["actors:supervision"].as_array().is_some_and(|checks| checks
                .iter()
                .any(|check| check["componentId"] == "health" && check["status"] == "fail")),
        "{report}"
    );
    assert!(state_is(&app, &admin, "health", "backing_off").await.is_some());

    chaos(&app, "health", "clear").await;
    app.wait_for_readiness(200, RECOVERY).await;
    until(RECOVERY, "health runs again", async || {}, || state_is(&app, &admin, "health", "running")).await;
}

/// While the rate limiter backs off, requests meet its fail-open budget without waiting
/// for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_rate_limiter_backs_off_to_its_fail_open_budget() {
    let app = spawn(Backend::Sqlite).await;
    let (_, admin) = app.admin("ops@example.com").await;
    let fail_open = "storefront_rate_limiter_fail_open_total";
    let before = app.metric(fail_open).await;
    chaos(&app, "rate_limiter", "crash_loop").await;
    let limited_request = async || {
        let response = app.get("/api/v1/products").await;
        let status = response.status().as_u16();
        // Passed within the budget, or refused once it is spent: never left waiting.
        assert!(status == 200 || status == 503, "got {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    until(BACKING_OFF, "the limiter backs off and requests fail open", limited_request, || async {
        let backing_off = state_is(&app, &admin, "rate_limiter", "backing_off").await;
        (app.metric(fail_open).await > before).then_some(backing_off).flatten()
    })
    .await;

    chaos(&app, "rate_limiter", "clear").await;
    until(RECOVERY, "the limiter recovers", async || {}, || state_is(&app, &admin, "rate_limiter", "running")).await;
    let decided = app.get("/api/v1/products").await;
    assert_eq!(decided.status(), 200);
    assert!(decided.headers().contains_key("ratelimit"), "decided by the limiter again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_are_for_actors_that_run() {
    let app = TestApp::builder(Backend::Sqlite).setting("cache-capacity", "0").spawn().await;
    for actor in ["cache", "nats_publisher"] {
        let response = app.chaos(json!({"actor": actor, "fault": "crash_loop"})).await;
        assert_problem(response, 422).await;
    }
}
