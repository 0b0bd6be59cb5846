//! The black-box harness: each test gets the real server on a random port with a fresh
//! database of its own (a temp SQLite file, or a PostgreSQL database created here and
//! dropped afterwards), and speaks HTTP to it.
//!
//! PostgreSQL tests run when `TEST_DATABASE_URL` points at a server whose user may create
//! databases. Without it they are compiled as ignored (see `build.rs`), so the summary
//! counts them as ignored, unless `REQUIRE_POSTGRES=1` (CI), which turns a missing
//! PostgreSQL into a failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod child_server;
pub mod db_lock;
pub mod events;
pub mod one_connection;
pub mod postgres_server;
pub mod raw_ws;
pub mod redis_server;
pub mod shop;
pub mod ws;

use std::{sync::mpsc, thread, time::Duration};

use actix_web::dev::ServerHandle;
use diesel::{Connection, PgConnection, RunQueryDsl};
use reqwest::{Method, Response};
use serde_json::Value;
use storefront::{cli::Cli, Application, Config};

/// Every row the actors API shows (and the ops page renders) on a default server.
pub const EVERY_ACTOR: [&str; 10] = [
    "db_executor",
    "db_breaker",
    "db_probe",
    "password_hasher",
    "health",
    "rate_limiter",
    "janitor",
    "cache",
    "event_relay",
    "event_hub",
];
pub const CHAOS_TOKEN: &str = "chaos-token-for-tests-only";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const PASSWORD: &str = "correct horse battery";
const BIN: &str = env!("CARGO_BIN_EXE_storefront");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]`, in module `$module`, for each scenario `async fn()`
/// that only PostgreSQL can show (writers committing concurrently); reported as ignored,
/// like the PostgreSQL halves, without TEST_DATABASE_URL.
#[macro_export]
macro_rules! on_postgres_only {
    ($module:ident: $($scenario:ident),+ $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(storefront_postgres_tests), ignore = "PostgreSQL half: set TEST_DATABASE_URL to run it")]
                async fn $scenario() {
                    if !$crate::common::postgres_available() {
                        return;
                    }
                    super::$scenario().await;
                }
            )+
        }
    };
}

/// Generates one `#[tokio::test]` per backend for each scenario `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario($crate::common::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(storefront_postgres_tests), ignore = "PostgreSQL half: set TEST_DATABASE_URL to run it")]
                async fn $scenario() {
                    if !$crate::common::postgres_available() {
                        return;
                    }
                    super::$scenario($crate::common::Backend::Postgres).await;
                }
            )+
        }
    };
}

/// The admin URL of the PostgreSQL that tests create databases on, if any.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL").ok().filter(|url| !url.trim().is_empty())
}

/// Whether PostgreSQL tests can run; panics when CI requires them and they cannot.
pub fn postgres_available() -> bool {
    if postgres_admin_url().is_some() {
        return true;
    }
    assert!(
        std::env::var("REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
        "REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set"
    );
    eprintln!("SKIPPED: PostgreSQL half of this test (set TEST_DATABASE_URL to run it)");
    false
}

/// A database that lives as long as the test.
pub enum TestDatabase {
    Sqlite { dir: tempfile::TempDir },
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    pub fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite { dir: tempfile::tempdir().expect("temp dir") },
            Backend::Postgres => {
                let admin_url = postgres_admin_url().expect("TEST_DATABASE_URL is set");
                let name = format!("storefront_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::establish(&admin_url).expect("connect to TEST_DATABASE_URL");
                diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).expect("create test database");
                Self::Postgres { admin_url, name }
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { dir } => {
                format!("sqlite://{}", dir.path().join("storefront.db").display())
            }
            Self::Postgres { admin_url, name } => {
                let mut url = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
                url.set_path(name);
                url.to_string()
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self {
            if let Ok(mut conn) = PgConnection::establish(admin_url) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

/// Builds the settings of one test server: the defaults below plus any flag a test adds.
pub struct TestAppBuilder {
    backend: Backend,
    args: Vec<String>,
    database: Option<TestDatabase>,
    database_url: Option<String>,
}

impl TestAppBuilder {
    pub fn setting(mut self, flag: &str, value: &str) -> Self {
        self.args.push(format!("--{flag}"));
        self.args.push(value.to_owned());
        self
    }

    /// Serve an existing database (one made by `postgres_server`, say) instead of a fresh one.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        let (url, database) = match self.database_url.take() {
            Some(url) => (url, None),
            None => {
                let database = TestDatabase::create(self.backend);
                (database.url(), Some(database))
            }
        };
        let mut argv = vec![
            "storefront".to_owned(),
            "serve".into(),
            "--bind".into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            url.clone(),
            "--db-workers".into(),
            "2".into(),
            "--health-probe-interval-ms".into(),
            "100".into(),
            "--chaos-token".into(),
            CHAOS_TOKEN.into(),
            "--jwt-secret".into(),
            JWT_SECRET.into(),
            // Generous limits: only the rate-limit tests, which set their own, hit them.
            "--rate-limit-rps".into(),
            "100000".into(),
            "--rate-limit-burst".into(),
            "100000".into(),
            "--auth-rate-limit-per-minute".into(),
            "100000".into(),
            // On a busy CI machine a cache actor can take longer than the production 250 ms to
            // be scheduled; the tests assert what the cache did, not that it was bypassed.
            "--cache-ask-timeout-ms".into(),
            "10000".into(),
        ];
        argv.append(&mut self.args);
        let database_url = url;
        let config = config_from_argv(&argv);
        self.database = database;
        let (port, handle, thread) = start_server(config);
        let app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            database_url,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client"),
            backend: self.backend,
            handle,
            thread: Some(thread),
            _database: self.database.take(),
        };
        app.wait_until_ready().await;
        app
    }
}

pub fn config_from_argv(argv: &[String]) -> Config {
    let command = Cli::parse_command(argv).expect("test settings parse");
    let storefront::cli::Command::Serve(args) = command else { unreachable!("serve command") };
    Config::from_serve_args(*args).expect("test settings are valid")
}

fn start_server(config: Config) -> (u16, ServerHandle, thread::JoinHandle<()>) {
    if std::env::var_os("TEST_LOG").is_some() {
        storefront::telemetry::init(storefront::config::LogFormat::Pretty);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            match Application::build(config) {
                Ok(app) => {
                    let _ = ready_tx.send(Ok((app.port(), app.handle())));
                    let _ = app.run_until_stopped().await;
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                }
            }
        });
    });
    let (port, handle) = ready_rx.recv().expect("server thread reports").expect("server starts");
    (port, handle, thread)
}

pub struct TestApp {
    pub address: String,
    pub database_url: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    handle: ServerHandle,
    thread: Option<thread::JoinHandle<()>>,
    _database: Option<TestDatabase>,
}

impl TestApp {
    pub fn builder(backend: Backend) -> TestAppBuilder {
        TestAppBuilder { backend, args: Vec::new(), database: None, database_url: None }
    }

    pub async fn spawn(backend: Backend) -> Self {
        Self::builder(backend).spawn().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path).json(body).send().await.expect("request sent")
    }

    pub async fn chaos(&self, body: Value) -> Response {
        self.request(Method::POST, "/ops/chaos").bearer_auth(CHAOS_TOKEN).json(&body).send().await.expect("sent")
    }

    pub async fn send_json(&self, method: Method, path: &str, token: &str, body: &Value) -> Response {
        self.request(method, path).bearer_auth(token).json(body).send().await.expect("request sent")
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path).bearer_auth(token).send().await.expect("request sent")
    }

    /// Credits a user's account as an admin.
    pub async fn deposit(&self, admin: &str, user_id: &str, amount_cents: i64) {
        let path = format!("/api/v1/accounts/{user_id}/deposits");
        let response =
            self.send_json(Method::POST, &path, admin, &serde_json::json!({"amount_cents": amount_cents})).await;
        assert_eq!(response.status(), 201, "deposit {amount_cents} for {user_id}");
    }

    /// Registers a user (password `PASSWORD`) and returns the created user.
    pub async fn register(&self, email: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                &serde_json::json!({"email": email, "password": PASSWORD, "name": "Test User"}),
            )
            .await;
        assert_eq!(response.status(), 201, "register {email}");
        response.json().await.expect("user json")
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json("/api/v1/auth/login", &serde_json::json!({"email": email, "password": password})).await
    }

    pub async fn token_for(&self, email: &str) -> String {
        let mut response = self.login(email, PASSWORD).await;
        // On a machine busy enough to shed password checks (503), signing in again is what
        // a client does; the tests are not about that.
        for attempt in 1..=5 {
            if response.status() != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            response = self.login(email, PASSWORD).await;
        }
        assert_eq!(response.status(), 200, "login {email}");
        let body: Value = response.json().await.expect("token json");
        body["access_token"].as_str().expect("access token").to_owned()
    }

    /// A registered user: (id, token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let user = self.register(email).await;
        (user["id"].as_str().expect("id").to_owned(), self.token_for(email).await)
    }

    /// An admin made the way operators make one, with `storefront user create`: (id, token).
    pub async fn admin(&self, email: &str) -> (String, String) {
        let output = tokio::process::Command::new(BIN)
            .args(["user", "create", "--email", email, "--password", PASSWORD, "--role", "admin"])
            .env("DATABASE_URL", &self.database_url)
            .output()
            .await
            .expect("run storefront user create");
        assert!(output.status.success(), "user create: {}", String::from_utf8_lossy(&output.stderr));
        let user: Value = serde_json::from_slice(&output.stdout).expect("user json");
        (user["id"].as_str().expect("id").to_owned(), self.token_for(email).await)
    }

    /// Polls /readyz until it passes: the first database probe runs right after start.
    pub async fn wait_until_ready(&self) {
        self.wait_for_readiness(200, Duration::from_secs(10)).await;
    }

    /// Polls /readyz until it answers `status`, failing the test after `within`.
    pub async fn wait_for_readiness(&self, status: u16, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await {
                if response.status().as_u16() == status {
                    return response.json().await.expect("health json");
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "/readyz did not turn {status} within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one Prometheus sample, e.g. `storefront_db_in_flight` or
    /// `storefront_actor_restarts_total{actor="health"}`; 0 when it is absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics text");
        metric_value(&text, sample)
    }

    /// The sample once it reached `at_least`, for effects that land after the answer (an
    /// actor that panics after its caller's ask timed out); fails after 30 s.
    pub async fn metric_reaching(&self, sample: &str, at_least: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.metric(sample).await;
            if value >= at_least {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "{sample} stayed at {value}, below {at_least}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().expect("numeric sample"))
        })
        .unwrap_or(0.0)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // ServerHandle::stop sends its command at once; the server thread then winds down
        // and its actors release their database connections before the database is dropped.
        let stopped = self.handle.stop(false);
        drop(stopped);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asserts that a response is an RFC 9457 problem with this status, and returns it.
pub async fn assert_problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail", "instance", "request_id"] {
        assert!(body[field].is_string(), "problem lacks {field}: {body}");
    }
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "problem and header name the same request");
    body
}
