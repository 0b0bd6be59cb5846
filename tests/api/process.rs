//! The binary as an operator runs it: start-up failures, migrations from the CLI, graceful
//! shutdown on SIGTERM, and riding out a PostgreSQL outage.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{postgres_server::PostgresServer, Backend, TestApp, TestDatabase, CHAOS_TOKEN};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_storefront");

/// The binary with a clean environment (PATH only), run in `cwd`.
pub(crate) fn storefront(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn stderr_lines(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect()
}

/// A process that failed: its one `storefront:` error line, and all it wrote to stderr.
fn failed_with_one_line(output: &std::process::Output) -> (String, Vec<String>) {
    assert!(!output.status.success());
    let lines = stderr_lines(output);
    let errors: Vec<&String> = lines.iter().filter(|line| line.starts_with("storefront:")).collect();
    assert_eq!(errors.len(), 1, "{lines:?}");
    (errors[0].clone(), lines)
}

#[test]
fn unreachable_postgres_stops_start_up_with_one_line_and_no_stray_file() {
    let cwd = tempfile::tempdir().unwrap();
    let output = storefront(cwd.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/storefront")
        .output()
        .unwrap();
    let (error, lines) = failed_with_one_line(&output);
    assert!(error.contains("PostgreSQL"), "{lines:?}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing is created on failure");
}

#[test]
fn a_taken_port_stops_start_up_with_one_line_and_no_panic() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = storefront(cwd.path())
        .args(["serve", "--bind", &address])
        .env("DATABASE_URL", "sqlite://data/shop.db")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let (error, lines) = failed_with_one_line(&output);
    assert!(error.contains("cannot listen on") && error.contains(&address), "{lines:?}");
    assert!(!lines.iter().any(|line| line.contains("panicked") || line.contains("reactor")), "{lines:?}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing is created before the port is ours");
}

#[test]
fn malformed_settings_stop_start_up_naming_the_setting() {
    let cwd = tempfile::tempdir().unwrap();
    for (variable, value) in [
        ("DATABASE_URL", "host=localhost dbname=shop"),
        ("DATABASE_URL", "mysql://localhost/shop"),
        ("DB_WORKERS", "many"),
        ("BIND_ADDR", "localhost"),
        ("LOG_FORMAT", "xml"),
        ("JWT_SECRET", "short"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "-1"),
        ("CORS_ALLOWED_ORIGINS", "not an origin"),
        ("ACTOR_MAX_RESTARTS", "1001"),
        ("ACTOR_RESTART_WINDOW_SECONDS", "0"),
    ] {
        let output = storefront(cwd.path()).arg("serve").env(variable, value).output().unwrap();
        assert!(!output.status.success(), "{variable}={value} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line for {variable}: {stderr}");
        assert!(stderr.contains(variable), "the message names {variable}: {stderr}");
        assert!(!stderr.contains(value) || variable != "JWT_SECRET", "secrets are never echoed");
    }
    let production = storefront(cwd.path()).arg("serve").env("APP_ENV", "production").output().unwrap();
    assert!(String::from_utf8_lossy(&production.stderr).contains("JWT_SECRET"));
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing is created on failure");
}

fn migrate_cycle(backend: Backend) {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(backend);
    let migrate = |action: &str| {
        let output =
            storefront(cwd.path()).args(["migrate", action]).env("DATABASE_URL", database.url()).output().unwrap();
        assert!(output.status.success(), "migrate {action}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let before = migrate("status");
    assert!(before.lines().all(|line| line.starts_with("pending ")), "{before}");
    let applied = migrate("run");
    assert_eq!(applied.lines().count(), before.lines().count());
    assert!(migrate("status").lines().all(|line| line.starts_with("applied ")));
    assert_eq!(migrate("run").trim(), "no pending migrations");
    let reverted = migrate("revert");
    assert!(reverted.starts_with("reverted "));
    assert!(migrate("status").lines().last().unwrap().starts_with("pending "));
}

#[test]
fn migrate_runs_reports_and_reverts_on_sqlite() {
    migrate_cycle(Backend::Sqlite);
}

#[cfg_attr(not(storefront_postgres_tests), ignore = "needs PostgreSQL: set TEST_DATABASE_URL to run it")]
#[test]
fn migrate_runs_reports_and_reverts_on_postgres() {
    if crate::common::postgres_available() {
        migrate_cycle(Backend::Postgres);
    }
}

#[test]
fn user_create_validates_before_touching_the_database() {
    let cwd = tempfile::tempdir().unwrap();
    for args in [
        ["--email", "root@example.com", "--password", "long enough pw", "--role", "superuser"],
        ["--email", "not-an-email", "--password", "long enough pw", "--role", "admin"],
        ["--email", "root@example.com", "--password", "short", "--role", "admin"],
    ] {
        let output = storefront(cwd.path()).args(["user", "create"]).args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr).trim().lines().count(), 1, "{args:?}");
    }
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "no database was created");

    let database = TestDatabase::create(Backend::Sqlite);
    let create = |email: &str| {
        storefront(cwd.path())
            .args(["user", "create", "--email", email, "--password", "long enough pw", "--role", "admin"])
            .env("DATABASE_URL", database.url())
            .output()
            .unwrap()
    };
    let created = create("Root@Example.com");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let user: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(
        (user["email"].as_str(), user["role"].as_str(), user["name"].as_str()),
        (Some("root@example.com"), Some("admin"), Some("Root"))
    );
    let duplicate = create("root@example.com");
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
}

#[test]
fn openapi_subcommand_prints_the_document() {
    let cwd = tempfile::tempdir().unwrap();
    let output = storefront(cwd.path()).arg("openapi").output().unwrap();
    assert!(output.status.success());
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(document["paths"]["/readyz"].is_object());
    assert!(document["paths"]["/ops/chaos"].is_null(), "fault injection is listed only where it is mounted");
}

/// A `storefront serve` child process with JSON logs; knows its port from the start-up log.
/// Killed if the test ends (or fails) while it still runs.
pub(crate) struct Served {
    pub child: Child,
    pub port: u16,
    /// The start-up log's `storefront is listening` record.
    pub listening: Value,
}

impl Served {
    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        assert_eq!(self.child.wait().unwrap().code(), Some(0), "exits cleanly on SIGTERM");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn serve(cwd: &Path, database_url: &str, extra: &[(&str, &str)]) -> Served {
    serve_on(cwd, "127.0.0.1:0", database_url, extra)
}

/// Serves on `bind` (port 0: any free one).
pub(crate) fn serve_on(cwd: &Path, bind: &str, database_url: &str, extra: &[(&str, &str)]) -> Served {
    let mut command = storefront(cwd);
    // No subcommand: plain `storefront` serves, which is what `cargo run` relies on.
    command
        .args(["--bind", bind])
        .env("DATABASE_URL", database_url)
        .env("LOG_FORMAT", "json")
        .env("CHAOS_TOKEN", CHAOS_TOKEN)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (key, value) in extra {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = loop {
        let line = lines.next().expect("the server logs its start").unwrap();
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if record["message"] == "storefront is listening" {
            break record;
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, port: listening["port"].as_u64().unwrap() as u16, listening }
}

#[test]
fn the_start_up_log_names_both_worker_counts() {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Sqlite);
    let served = serve(cwd.path(), &database.url(), &[("DB_WORKERS", "3")]);
    let record = &served.listening;
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(record["http_workers"].as_u64(), Some(cores), "one HTTP worker per core: {record}");
    assert_eq!(record["db_executors"], 3, "{record}");
    assert!(record.get("workers").is_none(), "no count that could be either: {record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_drains_in_flight_requests_and_exits_zero() {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Sqlite);
    // A drain long enough for the checks below to run inside it on a busy machine.
    let settings = [("SHUTDOWN_TIMEOUT_SECONDS", "10"), ("SHUTDOWN_DRAIN_SECONDS", "5")];
    let mut served = serve(cwd.path(), &database.url(), &settings);
    let base = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let in_flight = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .post(format!("{base}/ops/chaos"))
                .bearer_auth(CHAOS_TOKEN)
                .json(&json!({"actor": "db_executor", "fault": "stall", "millis": 2000}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    // The stall is admitted once the in-flight gauge shows it.
    while !client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("storefront_db_in_flight 1")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
    assert!(killed.success());

    // During the drain the listener is still open and readiness fails.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            assert_eq!(ready.json::<Value>().await.unwrap()["checks"]["process:shutdown"][0]["status"], "fail");
            break;
        }
        assert!(Instant::now() < deadline, "readiness did not fail during the drain");
    }
    assert_eq!(client.get(format!("{base}/livez")).send().await.unwrap().status(), 200);

    assert_eq!(in_flight.await.unwrap().unwrap(), 204, "the in-flight request finishes");
    let status = tokio::task::spawn_blocking(move || served.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(client.get(format!("{base}/livez")).send().await.is_err(), "no longer listening");
}

#[cfg_attr(not(storefront_postgres_tests), ignore = "needs PostgreSQL: set TEST_DATABASE_URL to run it")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_readiness_sheds_fast_and_recovers_by_itself() {
    if !PostgresServer::available() {
        return;
    }
    let server = tokio::task::spawn_blocking(PostgresServer::start).await.unwrap();
    let app = TestApp::builder(Backend::Postgres).database_url(&server.url()).spawn().await;
    let database_request = || app.chaos(json!({"actor": "db_executor", "fault": "stall", "millis": 0}));
    assert_eq!(database_request().await.status(), 204);

    server.stop();

    let report = app.wait_for_readiness(503, Duration::from_secs(5)).await;
    assert_eq!(report["checks"]["database:responseTime"][0]["status"], "fail", "{report}");
    assert_eq!(app.get("/livez").await.status(), 200, "liveness never depends on the database");

    // How fast it fails is measured by DB_CONNECT_TIMEOUT_MS, not asserted here.
    let refused = database_request().await;
    assert!(refused.headers().contains_key("retry-after"));
    crate::common::assert_problem(refused, 503).await;

    server.start_again();
    app.wait_for_readiness(200, Duration::from_secs(10)).await;
    assert_eq!(database_request().await.status(), 204, "recovered without a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_operators_and_says_going_away_to_every_live_subscriber() {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Sqlite);
    let created = storefront(cwd.path())
        .args([
            "user",
            "create",
            "--email",
            "ops@example.com",
            "--password",
            crate::common::PASSWORD,
            "--role",
            "admin",
        ])
        .env("DATABASE_URL", database.url())
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // The ops event must go out during the drain, before the connections are closed: a
    // drain long enough for that on a busy machine.
    let settings = [("SHUTDOWN_TIMEOUT_SECONDS", "10"), ("SHUTDOWN_DRAIN_SECONDS", "5")];
    let mut served = serve(cwd.path(), &database.url(), &settings);
    let base = format!("http://127.0.0.1:{}", served.port);
    let login = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": "ops@example.com", "password": crate::common::PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = login.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();

    let ws = format!("ws://127.0.0.1:{}/api/v1/ws", served.port);
    let mut operator = crate::common::ws::WsClient::connect_url(&format!("{ws}?access_token={token}")).await;
    operator.subscribe(&["ops"], None).await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut subscriber = crate::common::ws::WsClient::connect_url(&ws).await;
        subscriber.subscribe(&["products"], None).await;
        subscribers.push(subscriber);
    }

    let killed = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // (The replica may announce becoming ready first, if its first probe came after the subscription.)
    loop {
        let changed = operator.next_event().await;
        assert_eq!(changed["kind"], "health.changed", "{changed}");
        if changed["data"]["ready"] == false {
            assert_eq!(changed["data"]["checks"]["process:shutdown"][0]["status"], "fail");
            break;
        }
    }
    for subscriber in subscribers.iter_mut().chain([&mut operator]) {
        assert_eq!(subscriber.closed().await, (1001, "server shutting down".to_owned()));
    }
    let status = tokio::task::spawn_blocking(move || served.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "live connections do not hold the exit up");
}

/// One request on an open keep-alive connection; returns the response head, lower-cased.
fn exchange(stream: &mut std::net::TcpStream, path: &str) -> String {
    use std::io::{Read, Write};
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut received = Vec::new();
    let mut byte = [0_u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed mid-response");
        received.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&received).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    let mut body = vec![0_u8; length];
    stream.read_exact(&mut body).unwrap();
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_keep_alive_connections_are_asked_to_close() {
    let cwd = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Backend::Sqlite);
    // The exchange below must happen during the drain, on a busy machine too.
    let mut served = serve(cwd.path(), &database.url(), &[("SHUTDOWN_DRAIN_SECONDS", "10")]);
    let base = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let port = served.port;
    let mut kept_alive = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = exchange(&mut stream, "/livez");
        assert!(!head.contains("connection: close"), "{head}");
        stream
    })
    .await
    .unwrap();

    let killed = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 503).unwrap_or(true) {
        assert!(Instant::now() < deadline, "readiness never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let head = exchange(&mut kept_alive, "/livez");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "draining answers ask the client to close: {head}");
        let mut rest = [0_u8; 1];
        assert_eq!(kept_alive.read(&mut rest).unwrap(), 0, "and the server closes the connection");
    })
    .await
    .unwrap();
    served.child.kill().ok();
    served.child.wait().ok();
}
