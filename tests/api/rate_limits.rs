//! Rate limits as clients that spread their connections see them: the `default` policy
//! admits a client at most burst + rate × t (the stated slack S is 0) however it connects,
//! the `RateLimit` remaining a client sending one request at a time is told is what its
//! next request starts from, wherever it lands, and with `RATE_LIMIT_REDIS_URL` two
//! replicas together admit one limit, falling back to their own (without handing out a
//! fresh burst) while the test's private Redis is stopped and sharing again when it is back.
//!
//! Bounds are measured from the first request sent to the last answer received, which
//! contains every decision, so they hold however slowly the machine runs. Requests the
//! limiter did not decide (failing open on a stalled machine: no `RateLimit` header) are
//! counted apart, under their own budget. Redis is given its default timeout (50 ms): a
//! call that takes longer on a busy machine has its requests decided by the replica's own
//! limiter, and the tests then check the bound stated for that (each replica's own).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::common::{redis_server::RedisServer, Backend, TestApp};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::Value;

/// What one answer said.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    status: StatusCode,
    /// `r=` of `RateLimit`; `None` when the limiter did not decide (fail open).
    remaining: Option<u64>,
    retry_after: Option<u64>,
    sent: Instant,
    received: Instant,
}

impl Outcome {
    fn admitted_by_the_limiter(&self) -> bool {
        self.status == StatusCode::OK && self.remaining.is_some()
    }
}

fn field(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

fn remaining_in(state: Option<String>) -> Option<u64> {
    state?.split(';').find_map(|part| part.strip_prefix("r=")).and_then(|left| left.parse().ok())
}

/// A client that opens a new connection for every request, as many HTTP libraries do
/// without keep-alive: actix hands each connection to the next worker.
fn connection_per_request() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> Outcome {
    let sent = Instant::now();
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    let remaining = remaining_in(field(response.headers(), "ratelimit"));
    let retry_after = field(response.headers(), "retry-after").and_then(|value| value.parse().ok());
    response.bytes().await.unwrap();
    Outcome { status, remaining, retry_after, sent, received: Instant::now() }
}

/// `burst + rate × t` for the span from the first request sent to the last answer.
fn bound(outcomes: &[Outcome], rate: f64, burst: f64) -> f64 {
    let first = outcomes.iter().map(|o| o.sent).min().unwrap();
    let last = outcomes.iter().map(|o| o.received).max().unwrap();
    burst + rate * last.duration_since(first).as_secs_f64()
}

fn admitted(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|outcome| outcome.admitted_by_the_limiter()).count()
}

/// A server with this `default` policy (Redis, when given, with its default timeout).
async fn limited_app(rate: &str, burst: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut builder =
        TestApp::builder(Backend::Sqlite).setting("rate-limit-rps", rate).setting("rate-limit-burst", burst);
    for (flag, value) in extra {
        builder = builder.setting(flag, value);
    }
    builder.spawn().await
}

/// The issue's client: RATE_LIMIT_RPS=5, RATE_LIMIT_BURST=10, a new connection per
/// request for 3 s. It used to get 11 of 11 and 47 in 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_per_request_gets_the_quota_once() {
    let app = limited_app("5", "10", &[]).await;
    let (client, url) = (connection_per_request(), app.url("/api/v1/products"));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        outcomes.push(get(&client, &url).await);
    }
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 5.0, 10.0));
    assert!(admitted as f64 <= bound, "{admitted} admitted over {} requests, the bound is {bound:.2}", outcomes.len());
    assert!(admitted >= 10, "the whole burst was admitted: {admitted}");
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!refused.is_empty(), "the limit applied");
    assert!(refused
        .iter()
        .all(|o| o.retry_after.is_some_and(|wait| (1..=2).contains(&wait)) && o.remaining == Some(0)));
    // When the first eleven went out faster than one refill, the eleventh was refused.
    if outcomes[10].received.duration_since(outcomes[0].sent) < Duration::from_millis(200)
        && outcomes[..11].iter().all(|outcome| outcome.remaining.is_some())
    {
        assert_eq!(outcomes[10].status, StatusCode::TOO_MANY_REQUESTS, "{:?}", &outcomes[..11]);
    }
    let undecided = outcomes.iter().filter(|outcome| outcome.remaining.is_none()).count();
    assert_eq!(app.metric("storefront_rate_limiter_fail_open_total").await, undecided as f64);
}

/// What a client sending one request at a time may rely on, answer after answer: told one
/// or more remain, the next request passes; refused, a request sent once Retry-After has
/// passed passes; and no count is above the last one plus what could refill between the
/// two decisions, less the request it decides. (Requests the limiter did not decide, failing
/// open, are skipped: they took no token.)
fn check_sequential_told(outcomes: &[Outcome], rate: f64) {
    let decided: Vec<&Outcome> = outcomes.iter().filter(|outcome| outcome.remaining.is_some()).collect();
    let told: Vec<(u16, Option<u64>)> = decided.iter().map(|o| (o.status.as_u16(), o.remaining)).collect();
    for (n, pair) in decided.windows(2).enumerate() {
        let (this, next) = (pair[0], pair[1]);
        let remaining = this.remaining.unwrap_or_default();
        if this.status == StatusCode::OK && remaining >= 1 {
            assert_eq!(
                next.status,
                StatusCode::OK,
                "request {n} was told {remaining} remain, the next was refused: {told:?}"
            );
        }
        let waited = next.sent.duration_since(this.received);
        if this.status == StatusCode::TOO_MANY_REQUESTS
            && this.retry_after.is_some_and(|wait| waited >= Duration::from_secs(wait))
        {
            assert_eq!(
                next.status,
                StatusCode::OK,
                "request {} came after Retry-After and was refused: {told:?}",
                n + 1
            );
        }
        if next.status == StatusCode::OK {
            let refilled = (next.received.duration_since(this.sent).as_secs_f64() * rate).ceil() as u64;
            let next_remaining = next.remaining.unwrap_or_default();
            assert!(
                next_remaining < remaining + refilled,
                "request {n} was told {remaining}, request {} then {next_remaining} with at most {refilled} refilled: {told:?}",
                n + 1
            );
        }
    }
}

/// The reviewer's client: RATE_LIMIT_RPS=5, RATE_LIMIT_BURST=10, one request at a time on a
/// new connection each (so on one worker, then the other). It was told 9, 8, 3, 7, 2, 6, 1,
/// 5, 0, 4 and refused right after being told 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_a_new_connection_per_request_is_told_what_decides() {
    let app = limited_app("5", "10", &[]).await;
    let (client, url) = (connection_per_request(), app.url("/api/v1/products"));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        outcomes.push(get(&client, &url).await);
        // Now and then a pause that lets a few tokens refill, so counts rise again.
        if outcomes.len() % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    assert!(outcomes.iter().filter(|o| o.status == StatusCode::TOO_MANY_REQUESTS).count() >= 2);
    check_sequential_told(&outcomes, 5.0);
}

/// Thirty-two connections at once, each reconnecting for every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_get_the_quota_once() {
    let app = limited_app("5", "10", &[]).await;
    let url = Arc::new(app.url("/api/v1/products"));
    let started = Instant::now();
    let clients = (0..32).map(|_| {
        let url = Arc::clone(&url);
        tokio::spawn(async move {
            let client = connection_per_request();
            let mut outcomes = Vec::new();
            while started.elapsed() < Duration::from_secs(2) {
                outcomes.push(get(&client, &url).await);
            }
            outcomes
        })
    });
    let outcomes: Vec<Outcome> = join_all(clients).await.into_iter().flat_map(Result::unwrap).collect();
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 5.0, 10.0));
    assert!(admitted as f64 <= bound, "{admitted} admitted over {} requests, the bound is {bound:.2}", outcomes.len());
    assert!(admitted >= 10, "the whole burst was admitted: {admitted}");
    assert!(outcomes.iter().all(|o| [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&o.status)));
    let (_, admin) = app.admin("root@example.com").await;
    let report = lease_report(&app, &admin).await;
    assert!(report["leases"]["asked"].as_u64().unwrap() > 0, "workers asked the owner for leases: {report}");
}

/// What a client is told is what decides: while it says one or more remain the next
/// request passes, it reaches 0 exactly when the burst is spent, and after a refusal's
/// Retry-After a request passes. On one hand-held connection (one worker), at 1 request a
/// second so nothing refills between two requests unless the machine stalls a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remaining_count_decides_and_retry_after_is_kept() {
    let app = limited_app("1", "10", &[]).await;
    let (told, after_retry) = tell(&app).await;
    check_told(&told, after_retry);
}

/// What one hand-held connection was told, request after request, until two refusals; then
/// whether a request passed once the last refusal's Retry-After had passed.
type Told = Vec<(StatusCode, Option<u64>, Option<u64>, Instant)>;

async fn tell(app: &TestApp) -> (Told, StatusCode) {
    let mut connection = OneConnection::open(app).await;
    let mut told: Told = Vec::new();
    while told.iter().filter(|(status, ..)| *status == StatusCode::TOO_MANY_REQUESTS).count() < 2 {
        told.push(connection.get("/api/v1/products").await);
        assert!(told.len() < 40, "no refusal after 40 requests: {told:?}");
    }
    let (_, _, retry_after, _) = *told.last().unwrap();
    let retry_after = retry_after.expect("a 429 says when to retry");
    assert!((1..=2).contains(&retry_after), "one request refills in a second: {retry_after}");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (after, ..) = connection.get("/api/v1/products").await;
    (told, after)
}

fn check_told(told: &Told, after_retry: StatusCode) {
    for pair in told.windows(2) {
        let ((status, remaining, _, at), (next_status, next_remaining, _, next_at)) = (pair[0], pair[1]);
        let (Some(remaining), Some(next_remaining)) = (remaining, next_remaining) else {
            continue; // not decided by the limiter (fail open on a stalled machine)
        };
        if status == StatusCode::OK && remaining >= 1 {
            assert_eq!(next_status, StatusCode::OK, "told {remaining} remain, then refused: {told:?}");
            // One spent, plus whatever refilled in between (one a second).
            let refilled = next_at.duration_since(at).as_secs_f64().ceil() as u64;
            assert!(
                next_remaining + 1 >= remaining && next_remaining < remaining + refilled,
                "told {remaining}, then {next_remaining} within {refilled} s: {told:?}"
            );
        }
    }
    let decided: Vec<_> = told.iter().filter(|(_, remaining, ..)| remaining.is_some()).collect();
    let first_refusal = decided.iter().position(|(status, ..)| *status == StatusCode::TOO_MANY_REQUESTS).unwrap();
    assert!(
        first_refusal >= 1 && decided[first_refusal - 1].1 == Some(0),
        "refused right after being told 0: {told:?}"
    );
    assert_eq!(after_retry, StatusCode::OK, "a request passes once Retry-After has passed");
}

/// The rate limiter's row in the actors API.
async fn lease_report(app: &TestApp, admin: &str) -> Value {
    let body: Value = app.get_as("/api/v1/ops/actors", admin).await.json().await.unwrap();
    body["actors"].as_array().unwrap().iter().find(|actor| actor["name"] == "rate_limiter").unwrap()["state"].clone()
}

/// One HTTP/1.1 connection, so every request on it reaches the worker that accepted it.
struct OneConnection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl OneConnection {
    async fn open(app: &TestApp) -> Self {
        let host = app.address.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self { sender, host }
    }

    /// Status, `r=`, `Retry-After`, and when the answer came.
    async fn get(&mut self, path: &str) -> (StatusCode, Option<u64>, Option<u64>, Instant) {
        self.sender.ready().await.expect("the server kept the connection open");
        let request = hyper::Request::get(path).header("host", &self.host).body(Empty::new()).unwrap();
        let response = self.sender.send_request(request).await.expect("the server kept the connection open");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (remaining, retry_after) =
            (remaining_in(header("ratelimit")), header("retry-after").and_then(|value| value.parse().ok()));
        response.into_body().collect().await.unwrap();
        (status, remaining, retry_after, Instant::now())
    }
}

const FALLBACKS: &str = "storefront_rate_limiter_fallbacks_total";

fn backend_sample(backend: &str) -> String {
    format!(r#"storefront_rate_limiter_backend{{backend="{backend}"}}"#)
}

/// Polls until `check` holds, failing after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FAILED_CALLS: &str = r#"storefront_rate_limiter_redis_calls_total{result="failed"}"#;

/// Two replicas behind a load balancer that alternates between them, both on one Redis:
/// together they admit one client's limit once (S' = 0), for `default` and `auth` alike,
/// and a client sending one request at a time is told what decides, on either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_through_redis() {
    let Some(redis) = RedisServer::start().await else { return };
    let url = redis.url();
    let settings = [("rate-limit-redis-url", url.as_str()), ("auth-rate-limit-per-minute", "3")];
    let (first, second) = (limited_app("5", "10", &settings).await, limited_app("5", "10", &settings).await);
    for app in [&first, &second] {
        assert_eq!(app.metric(&backend_sample("redis")).await, 1.0, "Redis is the backend from the start");
        assert_eq!(app.metric(&backend_sample("local")).await, 0.0);
    }
    let client = connection_per_request();
    let urls = [first.url("/api/v1/products"), second.url("/api/v1/products")];
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        outcomes.push(get(&client, &urls[outcomes.len() % 2]).await);
    }
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 5.0, 10.0));
    let failed = first.metric(FAILED_CALLS).await + second.metric(FAILED_CALLS).await;
    let fallbacks = first.metric(FALLBACKS).await + second.metric(FALLBACKS).await;
    if failed == 0.0 {
        assert!(admitted as f64 <= bound, "{admitted} admitted by two replicas, the bound is {bound:.2}");
        check_sequential_told(&outcomes, 5.0);
    } else if fallbacks == 0.0 {
        // A call took longer than its timeout on this busy machine (its probes answered): the
        // one request waiting on it was decided by that replica's own limiter, which Redis
        // does not learn of (README, "Rate limits").
        eprintln!("note: {failed} Redis call(s) failed during the run, no fallback");
        assert!(admitted as f64 <= bound + failed, "{admitted} admitted, {failed} failed call(s), bound {bound:.2}");
    } else {
        // The replicas limited on their own for a while: each to one bucket, and Redis's on top
        // for the windows that span a return (README, "Rate limits").
        eprintln!("note: {fallbacks} fallback(s) during the run; checking the bound stated for it");
        assert!(admitted as f64 <= 3.0 * bound, "{admitted} admitted, the fallback bound is {:.2}", 3.0 * bound);
    }
    assert!(admitted >= 10, "the whole burst was admitted: {admitted}");
    for app in [&first, &second] {
        assert!(app.metric(r#"storefront_rate_limiter_redis_calls_total{result="ok"}"#).await > 0.0);
    }
    // Sign-ins: three a minute for this address, whichever replica is asked (the admin's
    // sign-in on the first replica was one of them).
    let (_, admin) = first.admin("root@example.com").await;
    assert_eq!(lease_report(&first, &admin).await["mode"], "redis");
    let mut statuses = Vec::new();
    for attempt in 0..3 {
        let app = [&second, &first][attempt % 2];
        statuses.push(app.login("nobody@example.com", "not-the-password").await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429], "the fourth sign-in, on either replica, is refused");
}

/// One hand-held connection to a replica on Redis: the count it is told is Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_remaining_count_decides_too() {
    let Some(redis) = RedisServer::start().await else { return };
    let app = limited_app("1", "10", &[("rate-limit-redis-url", &redis.url())]).await;
    let (told, after_retry) = tell(&app).await;
    if app.metric(FAILED_CALLS).await == 0.0 {
        check_told(&told, after_retry);
    } else {
        // A call took longer than its timeout on this busy machine: the replica's own ledger
        // decided part of this sequence.
        eprintln!("note: a Redis call failed during the run; what it was told is not checked: {told:?}");
    }
    assert!(app.metric(r#"storefront_rate_limiter_redis_calls_total{result="ok"}"#).await > 0.0);
}

/// Under load, Redis stops: the replica falls back to its own limiter (every request still
/// decided, readiness untouched), says so in the metrics and the actors API, and shares
/// limits through Redis again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_and_recovers_under_load() {
    let Some(mut redis) = RedisServer::start().await else { return };
    let app = limited_app("1000", "1000", &[("rate-limit-redis-url", &redis.url())]).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = Arc::new(app.url("/api/v1/products"));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (done, url) = (Arc::clone(&done), Arc::clone(&url));
            tokio::spawn(async move {
                let client = connection_per_request();
                let mut outcomes = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    outcomes.push(get(&client, &url).await);
                    // Leases keep most requests off Redis; a new client now and then asks it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcomes
            })
        })
        .collect();
    let (_, admin) = app.admin("root@example.com").await;
    let calls = r#"storefront_rate_limiter_redis_calls_total{result="ok"}"#;
    eventually("a call to Redis", Duration::from_secs(10), || async { app.metric(calls).await > 0.0 }).await;

    redis.stop();
    eventually("the fall back to the local limiter", Duration::from_secs(10), || async {
        app.metric(&backend_sample("local")).await == 1.0
    })
    .await;
    assert_eq!(app.metric(&backend_sample("redis")).await, 0.0);
    assert!(app.metric(FALLBACKS).await >= 1.0);
    assert_eq!(lease_report(&app, &admin).await["mode"], "fallback");
    assert_eq!(app.get("/readyz").await.status(), 200, "readiness does not depend on Redis");

    redis.resume().await;
    eventually("the return to Redis", Duration::from_secs(10), || async {
        app.metric(&backend_sample("redis")).await == 1.0
    })
    .await;
    let after = app.metric(calls).await;
    eventually("calls to Redis again", Duration::from_secs(10), || async { app.metric(calls).await > after }).await;
    assert_eq!(lease_report(&app, &admin).await["mode"], "redis");

    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes: Vec<Outcome> = join_all(load).await.into_iter().flat_map(Result::unwrap).collect();
    assert!(
        outcomes.iter().all(|outcome| outcome.status == StatusCode::OK),
        "every request passed (limits are generous)"
    );
    let undecided = outcomes.iter().filter(|outcome| outcome.remaining.is_none()).count();
    assert_eq!(app.metric("storefront_rate_limiter_fail_open_total").await, undecided as f64, "the rest were decided");
}

/// A replica whose Redis is not up yet starts and serves (its own limiter deciding, with
/// the one-replica bound), and joins Redis when it comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_without_redis_and_joins_it_later() {
    let Some(mut redis) = RedisServer::on_port(crate::common::redis_server::free_port()) else { return };
    let app = limited_app("5", "10", &[("rate-limit-redis-url", &redis.url())]).await;
    let (client, url) = (connection_per_request(), app.url("/api/v1/products"));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while started.elapsed() < Duration::from_secs(2) {
        outcomes.push(get(&client, &url).await);
    }
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 5.0, 10.0));
    assert!(admitted as f64 <= bound && admitted >= 10, "{admitted} admitted alone, the bound is {bound:.2}");
    assert_eq!(app.metric(&backend_sample("local")).await, 1.0);

    redis.resume().await;
    eventually("the switch to Redis", Duration::from_secs(10), || async {
        app.metric(&backend_sample("redis")).await == 1.0
    })
    .await;
    let outcome = get(&client, &url).await;
    assert!(outcome.remaining.is_some(), "decided once Redis is there: {outcome:?}");
}

/// Redis that hangs instead of refusing: a request that needs it is still decided (the
/// call gives up after RATE_LIMIT_REDIS_TIMEOUT_MS and the replica's own limiter decides),
/// the probes that call sends hang too so the replica falls back, and it returns to Redis
/// once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_is_given_up_on_at_its_timeout() {
    let Some(redis) = RedisServer::start().await else { return };
    let settings = [("rate-limit-redis-url", redis.url()), ("trusted-proxies", "127.0.0.1".into())];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(flag, value)| (*flag, value.as_str())).collect();
    let app = limited_app("5", "10", &settings).await;
    let from = |client: &str| app.request(reqwest::Method::GET, "/api/v1/products").header("x-forwarded-for", client);
    assert!(from("203.0.113.1").send().await.unwrap().headers().contains_key("ratelimit"));
    eventually("Redis in use", Duration::from_secs(10), || async { app.metric(&backend_sample("redis")).await == 1.0 })
        .await;
    let failed = r#"storefront_rate_limiter_redis_calls_total{result="failed"}"#;
    let (fallbacks_before, failed_before) = (app.metric(FALLBACKS).await, app.metric(failed).await);

    redis.freeze(true);
    // A client never seen has no lease: deciding it needs Redis.
    let started = Instant::now();
    let response = from("203.0.113.2").send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("ratelimit"), "decided by the local limiter");
    assert!(waited < Duration::from_secs(5), "it did not wait for Redis to come back: {waited:?}");
    // The failed call sent probes; they fail too, so the replica leaves Redis.
    eventually("the fall back", Duration::from_secs(10), || async {
        app.metric(FALLBACKS).await >= fallbacks_before + 1.0
    })
    .await;
    redis.freeze(false);
    assert!(app.metric(failed).await > failed_before);
    eventually("the return to Redis", Duration::from_secs(10), || async {
        app.metric(&backend_sample("redis")).await == 1.0
    })
    .await;
}

/// One replica on Redis, a client spending its burst there, then Redis stops: the replica
/// decides on its own ledgers, which counted what Redis admitted, so the client gets no
/// second burst. (Each switch used to hand every active client a fresh local bucket.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falling_back_hands_out_no_fresh_burst() {
    let Some(mut redis) = RedisServer::start().await else { return };
    let app = limited_app("2", "10", &[("rate-limit-redis-url", &redis.url())]).await;
    let (client, url) = (connection_per_request(), app.url("/api/v1/products"));
    let mut outcomes = Vec::new();
    while outcomes.iter().filter(|o: &&Outcome| o.status == StatusCode::TOO_MANY_REQUESTS).count() < 3 {
        outcomes.push(get(&client, &url).await);
        assert!(outcomes.len() < 200, "no refusal on Redis");
    }
    redis.stop();
    // The client keeps asking: once its refusal's wait is over, a call to Redis fails.
    let stopped = Instant::now();
    while app.metric(&backend_sample("local")).await != 1.0 {
        assert!(stopped.elapsed() < Duration::from_secs(10), "no fall back to the local limiter within 10 s");
        outcomes.push(get(&client, &url).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fallen_back = Instant::now();
    while fallen_back.elapsed() < Duration::from_secs(1) {
        outcomes.push(get(&client, &url).await);
    }
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 2.0, 10.0));
    assert!(admitted as f64 <= bound, "{admitted} admitted across the switch, one bucket's bound is {bound:.2}");
    assert!(admitted >= 10, "the whole burst was admitted: {admitted}");
}

/// More clients than RATE_LIMIT_MAX_KEYS: a flood of addresses, and a signed-in client on
/// eight connections at once. The client's bucket is never forgotten while it owes (it got
/// 820 in 10 s against a bound of 60), and every request of the flood is decided (none is
/// dropped into the fail-open budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_clients_does_not_reset_anyone() {
    let app = limited_app("5", "10", &[("rate-limit-max-keys", "10"), ("trusted-proxies", "127.0.0.1")]).await;
    let (_, token) = app.user("pressed@example.com").await;
    let url = Arc::new(app.url("/api/v1/products"));
    let started = Instant::now();
    let seconds = Duration::from_secs(3);
    let client_tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, token) = (Arc::clone(&url), token.clone());
            tokio::spawn(async move {
                let client = connection_per_request();
                let mut outcomes = Vec::new();
                while started.elapsed() < seconds {
                    let sent = Instant::now();
                    let response = client.get(url.as_str()).bearer_auth(&token).send().await.unwrap();
                    let status = response.status();
                    let remaining = remaining_in(field(response.headers(), "ratelimit"));
                    response.bytes().await.unwrap();
                    outcomes.push(Outcome { status, remaining, retry_after: None, sent, received: Instant::now() });
                }
                outcomes
            })
        })
        .collect();
    let flood_tasks: Vec<_> = (0..8)
        .map(|task| {
            let url = Arc::clone(&url);
            tokio::spawn(async move {
                let client = connection_per_request();
                let mut statuses = Vec::new();
                let mut n = task;
                while started.elapsed() < seconds {
                    let address = format!("198.18.{}.{}", n / 250, 1 + n % 250);
                    let response = client.get(url.as_str()).header("x-forwarded-for", address).send().await.unwrap();
                    statuses.push((response.status(), response.headers().contains_key("ratelimit")));
                    n = (n + 8) % 250;
                }
                statuses
            })
        })
        .collect();
    let outcomes: Vec<Outcome> = join_all(client_tasks).await.into_iter().flat_map(Result::unwrap).collect();
    let flood: Vec<(StatusCode, bool)> = join_all(flood_tasks).await.into_iter().flat_map(Result::unwrap).collect();
    let (admitted, bound) = (admitted(&outcomes), bound(&outcomes, 5.0, 10.0));
    assert!(admitted as f64 <= bound, "{admitted} admitted under key pressure, the bound is {bound:.2}");
    assert!(flood.len() > 100, "the flood ran: {} requests", flood.len());
    assert!(
        flood.iter().all(|(status, _)| [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(status)),
        "every request of the flood was answered 200 or 429"
    );
    let undecided = outcomes.iter().filter(|o| o.remaining.is_none()).count()
        + flood.iter().filter(|(_, decided)| !decided).count();
    assert_eq!(app.metric("storefront_rate_limiter_fail_open_total").await, undecided as f64);
}

/// A Redis that answers PING but cannot run the ledger script (here a read-only replica,
/// as after a failover; an ACL or a full memory do the same): the replica falls back once
/// and stays there, since its probes run the script. (Probed with PING, it used to return
/// every 250 ms and fall back again at the next call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_cannot_run_the_script_is_not_taken_back() {
    let unused = crate::common::redis_server::free_port().to_string();
    let Some(replica) = RedisServer::start_with(&["--replicaof", "127.0.0.1", &unused]).await else { return };
    let app = limited_app("1000", "1000", &[("rate-limit-redis-url", &replica.url())]).await;
    let (client, url) = (connection_per_request(), app.url("/api/v1/products"));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        outcomes.push(get(&client, &url).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(outcomes.iter().all(|outcome| outcome.status == StatusCode::OK && outcome.remaining.is_some()));
    assert_eq!(app.metric(FALLBACKS).await, 1.0, "fell back once, and no probe took it back");
    assert_eq!(app.metric(&backend_sample("local")).await, 1.0);
    assert!(app.metric(FAILED_CALLS).await >= 5.0, "probes ran and failed");
}
