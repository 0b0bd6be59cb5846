//! `storefront tail` as a user runs it: a child process following a server process that
//! is restarted mid-stream while another replica keeps writing. What it prints must be
//! every event it may see, in order, once: no gap, no duplicate.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    common::{
        events::{execute, read_events},
        Backend, TestDatabase, PASSWORD,
    },
    process::{serve_on, storefront},
};

on_both_backends!(tail_resumes_across_a_server_restart_without_a_gap_or_a_duplicate);

/// The patience for anything a test waits on here: far above what a busy machine needs.
const PATIENCE: Duration = Duration::from_secs(60);
/// Shared by every server of a test, so a token survives the restart.
const SECRET: &str = "tail-test-secret-tail-test-secret-0123456789";

/// A running `storefront tail`: what it printed so far on stdout and stderr.
struct Tail {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// How a `storefront tail` gets its token.
enum Token<'a> {
    Env(&'a str),
    Stdin(&'a str),
}

impl Tail {
    fn start(cwd: &Path, port: u16, token: Token, args: &[&str]) -> Self {
        let mut command = storefront(cwd);
        command
            .args(["tail", "--url", &format!("http://127.0.0.1:{port}")])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match token {
            Token::Env(token) => {
                command.env("STOREFRONT_TOKEN", token);
            }
            Token::Stdin(_) => {
                command.arg("--token-stdin");
            }
        }
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Token::Stdin(token) = token {
            use std::io::Write;
            writeln!(stdin, "{token}").unwrap();
        }
        drop(stdin);
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self { child, stdout, stderr }
    }

    /// The ids printed so far, in the order printed; every line must be one event.
    fn ids(&self) -> Vec<i64> {
        let lines = self.stdout.lock().unwrap().clone();
        lines
            .iter()
            .map(|line| {
                let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert_eq!(event["type"], "event", "{line}");
                event["id"].as_i64().unwrap()
            })
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until it printed an event with an id of at least `id`.
    async fn printed_through(&self, id: i64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.ids().last().is_none_or(|last| *last < id) {
            assert!(tokio::time::Instant::now() < deadline, "tail never printed {id}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stderr_says(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.stderr().contains(what) {
            assert!(tokio::time::Instant::now() < deadline, "tail never said {what:?}:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn login(base: &str, email: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

fn create_admin(cwd: &Path, database_url: &str) -> String {
    let output = storefront(cwd)
        .args(["user", "create", "--email", "root@example.com", "--password", PASSWORD, "--role", "admin"])
        .env("DATABASE_URL", database_url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice::<Value>(&output.stdout).unwrap()["id"].as_str().unwrap().to_owned()
}

/// The outbox ids an admin's `tail` (products, orders, account) may see after `since`.
fn visible_ids(database_url: &str, admin_id: &str, since: i64) -> Vec<i64> {
    read_events(database_url)
        .into_iter()
        .filter(|event| event.id > since)
        .filter(|event| match event.topic.as_str() {
            "products" | "orders" => true,
            "account" => event.user_id.as_deref() == Some(admin_id),
            _ => false,
        })
        .map(|event| event.id)
        .collect()
}

async fn tail_resumes_across_a_server_restart_without_a_gap_or_a_duplicate(backend: Backend) {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(backend);
    let url = database.url();
    let admin_id = create_admin(cwd.path(), &url);
    // Writes as fast as the server takes them: no rate limit in the way.
    let settings = [("JWT_SECRET", SECRET), ("RATE_LIMIT_RPS", "100000"), ("RATE_LIMIT_BURST", "100000")];
    // The replica tail follows, on a port of its own so it can come back on it; and a
    // second replica on the same database that keeps writing while the first restarts.
    let port = free_port();
    let followed = serve_on(cwd.path(), &format!("127.0.0.1:{port}"), &url, &settings);
    let writer = serve_on(cwd.path(), "127.0.0.1:0", &url, &settings);
    let writer_base = format!("http://127.0.0.1:{}", writer.port);
    let admin = login(&writer_base, "root@example.com").await;

    let since = read_events(&url).last().map_or(0, |event| event.id);
    let tail = Tail::start(cwd.path(), port, Token::Env(&admin), &["--since", &since.to_string()]);

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writes = tokio::spawn({
        let (writing, admin, base) = (Arc::clone(&writing), admin.clone(), writer_base.clone());
        async move {
            let client = reqwest::Client::new();
            let mut written = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let created = client
                    .post(format!("{base}/api/v1/products"))
                    .bearer_auth(&admin)
                    .json(&json!({"name": format!("Widget {written}"), "price_cents": 100, "stock": 1}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(created.status(), 201);
                let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                let patched = client
                    .request(Method::PATCH, format!("{base}/api/v1/products/{id}"))
                    .bearer_auth(&admin)
                    .json(&json!({"stock": 2}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(patched.status(), 200);
                written += 2;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            written
        }
    });

    // Mid-stream: once events flow, the followed replica shuts down (1001) and comes back.
    tail.printed_through(since + 10).await;
    followed.stop();
    tail.stderr_says("server is shutting down").await;
    let followed = serve_on(cwd.path(), &format!("127.0.0.1:{port}"), &url, &settings);
    // Written while it was away, or after: printed only after tail came back.
    let after_restart = read_events(&url).last().unwrap().id;
    tail.printed_through(after_restart + 10).await;

    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(writes.await.unwrap() >= 20);
    let expected = visible_ids(&url, &admin_id, since);
    tail.printed_through(*expected.last().unwrap()).await;
    assert_eq!(tail.ids(), expected, "every event after --since, in order, each once\n{}", tail.stderr());
    assert!(tail.stderr().contains("reconnecting"), "{}", tail.stderr());
    drop((followed, writer));
}

/// Waits for a child to exit on its own, failing the test after `PATIENCE`.
async fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "tail did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_stops_on_a_refused_token_and_carries_on_after_a_pruned_since() {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Sqlite);
    let url = database.url();
    create_admin(cwd.path(), &url);
    let server =
        serve_on(cwd.path(), "127.0.0.1:0", &url, &[("JWT_SECRET", SECRET), ("JANITOR_INTERVAL_SECONDS", "1")]);
    let base = format!("http://127.0.0.1:{}", server.port);

    // A token the server refuses (401): no reconnecting, one line saying what to do.
    let mut refused = Tail::start(cwd.path(), server.port, Token::Env("not-a-token"), &[]);
    assert!(!exited(&mut refused.child).await.success());
    let errors: Vec<String> =
        refused.stderr.lock().unwrap().iter().filter(|line| line.starts_with("storefront:")).cloned().collect();
    assert_eq!(errors.len(), 1, "{}", refused.stderr());
    assert!(errors[0].contains("401") && errors[0].contains("get a new one"), "{}", errors[0]);
    assert!(refused.ids().is_empty());

    // Events pruned after --since: tail says so (and what to do), and goes on.
    let admin = login(&base, "root@example.com").await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{base}/api/v1/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Clock", "price_cents": 100, "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let product = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let first = read_events(&url).into_iter().find(|event| event.topic == "products").unwrap().id;
    execute(&url, "UPDATE events SET created_at = '2000-01-01 00:00:00'");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while read_events(&url).iter().any(|event| event.id == first) {
        assert!(tokio::time::Instant::now() < deadline, "the janitor did not prune");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pruned = Tail::start(cwd.path(), server.port, Token::Stdin(&admin), &["--since", &(first - 1).to_string()]);
    pruned.stderr_says("since_expired").await;
    assert!(pruned.stderr().contains("Re-read the state"), "{}", pruned.stderr());
    let patched = client
        .request(Method::PATCH, format!("{base}/api/v1/products/{product}"))
        .bearer_auth(&admin)
        .json(&json!({"stock": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let latest = read_events(&url).last().unwrap().id;
    pruned.printed_through(latest).await;
    assert_eq!(pruned.ids(), [latest], "live events follow the gap it reported");
}
