//! A new user's first hour: a missing database is created and a PostgreSQL that is not up
//! yet is waited for (within a bound), `migrate status` creates nothing, database flags work
//! wherever they are typed, `user create` takes the password from stdin or a prompt, `/docs`
//! works offline, every request leaves one access line without its query string, and the
//! deploy files hang together.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::common::{postgres_server::PostgresServer, Backend, TestApp, CHAOS_TOKEN, JWT_SECRET};
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

const BIN: &str = env!("CARGO_BIN_EXE_storefront");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// What a WebSocket client would put in its URL; it must never reach a log.
const QUERY_SECRET: &str = "qs-secret-7f3a9c";

fn storefront(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(cwd).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn one_error_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    let errors: Vec<_> = stderr.lines().filter(|line| line.starts_with("storefront:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    errors[0].to_owned()
}

/// A database nobody has made yet; a PostgreSQL one is dropped at the end of the test.
enum FreshDatabase {
    Sqlite { dir: tempfile::TempDir },
    Postgres { admin_url: String, name: String },
}

impl FreshDatabase {
    fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite { dir: tempfile::tempdir().unwrap() },
            Backend::Postgres => Self::Postgres {
                admin_url: crate::common::postgres_admin_url().unwrap(),
                name: format!("storefront_fresh_{}", uuid::Uuid::new_v4().simple()),
            },
        }
    }

    fn sqlite_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("not/made/yet/shop.db")
    }

    fn url(&self) -> String {
        match self {
            Self::Sqlite { dir } => format!("sqlite://{}", Self::sqlite_path(dir).display()),
            Self::Postgres { admin_url, name } => {
                let mut url = url::Url::parse(admin_url).unwrap();
                url.set_path(name);
                url.to_string()
            }
        }
    }

    fn exists(&self) -> bool {
        match self {
            Self::Sqlite { dir } => dir.path().join("not").exists(),
            Self::Postgres { .. } => PgConnection::establish(&self.url()).is_ok(),
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self {
            if let Ok(mut conn) = PgConnection::establish(admin_url) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

async fn a_missing_database_is_created_but_never_by_a_status_query(backend: Backend) {
    let cwd = tempfile::tempdir().unwrap();
    let database = FreshDatabase::new(backend);
    let url = database.url();

    let status = storefront(cwd.path()).args(["migrate", "status", "--database-url", &url]).output().unwrap();
    assert!(status.status.success(), "{}", text(&status.stderr));
    let pending = text(&status.stdout);
    assert!(!pending.is_empty() && pending.lines().all(|line| line.starts_with("pending ")), "{pending}");
    assert!(!database.exists(), "migrate status created the database");

    let run = storefront(cwd.path()).args(["migrate", "run", "--database-url", &url]).output().unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("did not exist"), "creation is logged: {}", text(&run.stderr));
    assert!(database.exists());
    assert_eq!(text(&run.stdout).lines().count(), pending.lines().count(), "every migration applied");

    // `serve` creates its database the same way.
    let served = FreshDatabase::new(backend);
    let app = TestApp::builder(backend).database_url(&served.url()).spawn().await;
    app.register("first@example.com").await;
    drop(app);
    assert!(served.exists());
}

async fn user_create_takes_the_password_from_stdin(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let password = "typed into a pipe";
    let mut child = Command::new(BIN)
        .args(["user", "create", "--email", "ops@example.com", "--role", "admin", "--password-stdin"])
        .env("DATABASE_URL", &app.database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let user: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(user["role"], "admin");
    assert_eq!(app.login("ops@example.com", password).await.status(), 200, "the piped password is the password");
}

on_both_backends!(a_missing_database_is_created_but_never_by_a_status_query, user_create_takes_the_password_from_stdin);

#[test]
fn a_user_who_may_not_create_databases_is_told_what_to_do() {
    if !crate::common::postgres_available() {
        return;
    }
    let admin_url = crate::common::postgres_admin_url().unwrap();
    let role = format!("storefront_nocreate_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&admin_url).unwrap();
    diesel::sql_query(format!("CREATE ROLE {role} LOGIN NOCREATEDB")).execute(&mut admin).unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_username(&role).unwrap();
    url.set_path(&format!("{role}_db"));
    let cwd = tempfile::tempdir().unwrap();
    let output = storefront(cwd.path()).args(["migrate", "run"]).env("DATABASE_URL", url.as_str()).output().unwrap();
    diesel::sql_query(format!("DROP ROLE {role}")).execute(&mut admin).unwrap();
    assert!(!output.status.success());
    let error = one_error_line(&output);
    assert!(error.contains("does not exist and could not be created") && error.contains("createdb"), "{error}");
}

#[test]
fn database_flags_work_before_and_after_the_subcommand_and_status_creates_no_file() {
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", cwd.path().join("data/shop.db").display());
    let mut outputs = Vec::new();
    for args in [
        vec!["migrate", "status", "--database-url", &url],
        vec!["migrate", "--database-url", &url, "status"],
        vec!["--database-url", &url, "migrate", "status"],
    ] {
        let output = storefront(cwd.path()).args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        outputs.push(text(&output.stdout));
    }
    assert!(outputs.windows(2).all(|pair| pair[0] == pair[1]), "{outputs:?}");
    // The default URL too (sqlite://data/storefront.db, relative to the working directory).
    assert!(storefront(cwd.path()).args(["migrate", "status"]).output().unwrap().status.success());
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "a status query creates nothing");

    let misplaced = storefront(cwd.path()).args(["--bind", "127.0.0.1:1", "migrate", "status"]).output().unwrap();
    assert!(!misplaced.status.success(), "a serve setting before another subcommand is refused, not ignored");
    assert!(text(&misplaced.stderr).contains("--bind"), "{}", text(&misplaced.stderr));
}

#[test]
fn an_unreachable_postgres_is_retried_within_the_bound_then_fails_with_one_line() {
    let cwd = tempfile::tempdir().unwrap();
    // A port that was just free and is now closed: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let output = storefront(cwd.path())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", format!("postgres://postgres@127.0.0.1:{port}/storefront"))
        .env("DB_STARTUP_RETRY_SECONDS", "2")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!output.status.success());
    let error = one_error_line(&output);
    assert!(error.contains("cannot connect to PostgreSQL") && error.contains("gave up after"), "{error}");
    assert!(text(&output.stderr).contains("PostgreSQL is not reachable yet; retrying"), "the wait is logged");
    assert!(took >= Duration::from_secs(2), "kept retrying for the configured time: {took:?}");
    assert!(took < Duration::from_secs(30), "gave up within the bound: {took:?}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

/// Lines a child process writes to stderr, collected as they come.
struct ChildLog {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildLog {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Self { child, lines }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (generously) for a line that satisfies `wanted` and returns it.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(line) = self.snapshot().into_iter().find(|line| wanted(line)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line {what}: {:#?}", self.snapshot());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port from the JSON start-up line.
    fn port(&self) -> u16 {
        let line = self.wait_for("saying it listens", |line| line.contains("storefront is listening"));
        let record: Value = serde_json::from_str(&line).unwrap();
        record["port"].as_u64().unwrap() as u16
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn serve_command(cwd: &Path, database_url: &str, log_format: &str) -> Command {
    let mut command = storefront(cwd);
    command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", database_url)
        .env("LOG_FORMAT", log_format)
        .env("JWT_SECRET", JWT_SECRET)
        .env("CHAOS_TOKEN", CHAOS_TOKEN);
    command
}

#[test]
fn a_postgres_that_comes_up_late_is_waited_for_and_its_missing_database_created() {
    if !PostgresServer::available() {
        return;
    }
    let server = PostgresServer::start();
    server.stop();
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{}/storefront_late", server.port);
    let mut command = serve_command(cwd.path(), &url, "json");
    command.env("DB_STARTUP_RETRY_SECONDS", "120");
    let served = ChildLog::spawn(command);
    served.wait_for("about waiting", |line| line.contains("PostgreSQL is not reachable yet"));

    server.start_again();
    let port = served.port();
    served.wait_for("about creating the database", |line| line.contains("PostgreSQL database did not exist"));
    let ready = get_when_ok(&format!("http://127.0.0.1:{port}/readyz"));
    assert!(ready.is_some(), "ready once PostgreSQL is up");
}

/// A GET from a synchronous test, retried until it answers 200; its body.
fn get_when_ok(url: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = reqwest::get(url).await {
                if response.status() == 200 {
                    return response.text().await.ok();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

#[test]
fn user_create_prompts_for_the_password_without_echo() {
    let database = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", database.path().join("shop.db").display());
    let password = "typed at a prompt";
    // `script` gives the command a terminal of its own, the way an operator's shell would.
    let command = format!("{BIN} user create --email prompt@example.com --database-url {url}");
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                screen.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        })
    };
    let wait_for_screen = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !screen.lock().unwrap().contains(wanted) {
            assert!(Instant::now() < deadline, "no {wanted:?} on screen: {:?}", screen.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_screen("Password: ");
    stdin.write_all(format!("{password}\r").as_bytes()).unwrap();
    wait_for_screen("Repeat password: ");
    stdin.write_all(format!("{password}\r").as_bytes()).unwrap();
    wait_for_screen("\"role\"");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "{:?}", screen.lock().unwrap());
    let screen = screen.lock().unwrap().clone();
    assert!(!screen.contains(password), "the password is not echoed: {screen:?}");
    assert!(screen.contains("prompt@example.com"), "{screen:?}");
}

#[test]
fn user_create_without_a_terminal_or_stdin_flag_says_how_to_pass_the_password() {
    let cwd = tempfile::tempdir().unwrap();
    // setsid: no controlling terminal, as under cron or CI.
    let output = Command::new("setsid")
        .args(["-w", BIN, "user", "create", "--email", "cron@example.com"])
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(one_error_line(&output).contains("--password-stdin"), "{}", text(&output.stderr));
}

#[test]
fn serve_help_describes_every_flag() {
    let cwd = tempfile::tempdir().unwrap();
    let output = storefront(cwd.path()).args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    let flags = help_flags(&help);
    assert!(flags.len() > 20, "{help}");
    for (flag, description) in flags {
        assert!(description.chars().filter(|c| c.is_alphabetic()).count() >= 8, "{flag} lacks a description: {help}");
    }
}

/// The README's configuration table lists exactly the settings `serve` declares, each with
/// the default it really has: clap's, or for a default derived at start-up the one its help
/// states, or "none".
#[test]
fn readme_configuration_table_matches_the_declared_settings() {
    use clap::CommandFactory;
    let command = storefront::cli::Cli::command();
    let serve = command.find_subcommand("serve").unwrap();
    let declared: BTreeMap<String, String> = serve
        .get_arguments()
        .filter_map(|arg| Some((arg.get_env()?.to_str()?.to_owned(), stated_default(arg))))
        .collect();
    assert!(declared.len() > 40, "{declared:?}");

    let readme = read("README.md");
    let section = readme.split("\n## Configuration\n").nth(1).unwrap().split("\n## ").next().unwrap();
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let variable = cells[0].trim_matches('`').to_owned();
        assert!(documented.insert(variable.clone(), cells[1].replace('`', "")).is_none(), "{variable} twice");
    }
    // Read by the tracing subscriber, not by clap.
    assert!(documented.remove("RUST_LOG").is_some() && !declared.contains_key("RUST_LOG"));

    let missing: Vec<_> = declared.keys().filter(|name| !documented.contains_key(*name)).collect();
    let unknown: Vec<_> = documented.keys().filter(|name| !declared.contains_key(*name)).collect();
    assert!(missing.is_empty(), "settings missing from the README's table: {missing:?}");
    assert!(unknown.is_empty(), "the README's table lists settings that do not exist: {unknown:?}");
    for (name, default) in &declared {
        let shown = &documented[name];
        match default.strip_prefix('=') {
            Some(exact) => assert_eq!(shown, exact, "{name}'s default"),
            None => assert!(shown.starts_with(default.as_str()), "{name}'s default is {default:?}, README: {shown:?}"),
        }
    }
}

/// `=VALUE` for clap's default, else the start of what the README must say: the default
/// the help states (`[default: …]`, derived at start-up) or "none".
fn stated_default(arg: &clap::Arg) -> String {
    let defaults: Vec<_> = arg.get_default_values().iter().filter_map(|value| value.to_str()).collect();
    match defaults.as_slice() {
        [value] if !value.is_empty() => format!("={value}"),
        _ => {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            match help.split_once("[default: ") {
                Some((_, rest)) => rest.split([']', ';']).next().unwrap().to_owned(),
                None => "none".to_owned(),
            }
        }
    }
}

/// `--flag` → its description, from clap's help (env and default notes left out).
fn help_flags(help: &str) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.starts_with("-h,") || trimmed.starts_with("-V,") {
            let flag = trimmed.split_whitespace().find(|word| word.starts_with("--")).unwrap().to_owned();
            // Short help puts the description on the same line after two spaces.
            let rest = trimmed.split_once("  ").map(|(_, rest)| rest.trim().to_owned()).unwrap_or_default();
            flags.insert(flag.clone(), rest);
            current = Some(flag);
        } else if let Some(flag) = &current {
            if !trimmed.is_empty() {
                let description = flags.get_mut(flag).unwrap();
                description.push(' ');
                description.push_str(trimmed);
            }
        }
    }
    for description in flags.values_mut() {
        let mut cleaned = description.clone();
        while let Some(start) = cleaned.find('[') {
            let end = cleaned[start..].find(']').map_or(cleaned.len(), |end| start + end + 1);
            cleaned.replace_range(start..end, "");
        }
        *description = cleaned.trim().to_owned();
    }
    flags
}

/// Every environment variable `serve` reads, from its help.
fn known_settings() -> BTreeSet<String> {
    let cwd = tempfile::tempdir().unwrap();
    let help = text(&storefront(cwd.path()).args(["serve", "--help"]).output().unwrap().stdout);
    let mut names: BTreeSet<String> =
        help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().to_owned()).collect();
    names.insert("RUST_LOG".into());
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_is_served_from_the_binary_and_loads_only_same_origin_assets() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for path in ["/", "/docs"] {
        let response = no_redirects.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 302, "{path}");
        assert_eq!(response.headers()["location"], "/docs/", "{path}");
    }

    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'"), "{csp}");
    assert!(!csp.contains("http"), "no other origin is allowed: {csp}");
    let html = page.text().await.unwrap();

    let assets = attribute_values(&html, &["src=\"", "href=\""]);
    assert!(assets.len() >= 3, "{html}");
    for asset in &assets {
        assert!(!asset.contains("//") && !asset.contains(':'), "only same-origin assets: {asset}");
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{path}");
    }

    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("\"/openapi.json\""), "the page reads our document: {initializer}");
    assert!(!initializer.contains("http://") && !initializer.contains("https://"), "{initializer}");
    assert!(initializer.contains("\"validatorUrl\": \"none\""), "no online validator: {initializer}");

    let document = app.get("/openapi.json").await;
    assert_eq!(
        document.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'",
        "JSON keeps the locked-down CSP"
    );
    let document: Value = document.json().await.unwrap();
    assert!(document["paths"]["/docs/"].is_object());

    crate::common::assert_problem(app.get("/docs/no-such-file.js").await, 404).await;
}

fn attribute_values(html: &str, prefixes: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for prefix in prefixes {
        for piece in html.split(prefix).skip(1) {
            values.push(piece.split('"').next().unwrap().to_owned());
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_one_access_line_without_its_query_string() {
    let cwd = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", cwd.path().join("shop.db").display());
    let mut command = serve_command(cwd.path(), &database, "json");
    command.env("RUST_LOG", "debug");
    let served = tokio::task::spawn_blocking(move || {
        let served = ChildLog::spawn(command);
        let port = served.port();
        (served, port)
    });
    let (served, port) = served.await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, request_id: &str| {
        client.request(method, format!("{base}{path}")).header("x-request-id", request_id)
    };
    let secret = format!("?access_token={QUERY_SECRET}");

    let register = send(reqwest::Method::POST, "/api/v1/auth/register", "fh-register")
        .json(&json!({"email": "log@example.com", "password": crate::common::PASSWORD, "name": "Log"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    let user_id = register.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let login = send(reqwest::Method::POST, "/api/v1/auth/login", "fh-login")
        .json(&json!({"email": "log@example.com", "password": crate::common::PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = login.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();

    let expectations = [
        ("fh-me", "/api/v1/users/me", "/api/v1/users/me", 200, "INFO"),
        ("fh-401", "/api/v1/users/me", "/api/v1/users/me", 401, "INFO"),
        ("fh-404", "/api/v1/products/0190c4d2-0000-7000-8000-000000000000", "/api/v1/products/{id}", 404, "INFO"),
        ("fh-unmatched", "/no/such/route", "unmatched", 404, "INFO"),
        ("fh-ws", "/api/v1/ws", "", 0, "INFO"),
    ];
    for (request_id, path, _, status, _) in expectations {
        let mut request = send(reqwest::Method::GET, &format!("{path}{secret}"), request_id);
        if request_id == "fh-me" {
            request = request.bearer_auth(&token);
        }
        let response = request.send().await.unwrap();
        if status != 0 {
            assert_eq!(response.status().as_u16(), status, "{request_id}");
        }
    }
    let crashed = send(reqwest::Method::POST, &format!("/ops/chaos{secret}"), "fh-500")
        .bearer_auth(CHAOS_TOKEN)
        .json(&json!({"actor": "db_executor", "fault": "panic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(crashed.status(), 500);

    let access_line = |request_id: &'static str| {
        let line = served.wait_for(request_id, |line| {
            line.contains("storefront::access") && line.contains(&format!("\"request_id\":\"{request_id}\""))
        });
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let crash = tokio::task::block_in_place(|| access_line("fh-500"));
    assert_eq!((crash["level"].as_str(), crash["status"].as_u64()), (Some("ERROR"), Some(500)), "{crash}");
    assert_eq!(crash["route"], "/ops/chaos");
    for (request_id, _, route, status, level) in expectations {
        let line = tokio::task::block_in_place(|| access_line(request_id));
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert!(line["duration_ms"].is_number(), "{line}");
        if status != 0 {
            assert_eq!(line["status"], status, "{line}");
            assert_eq!(line["route"], route, "{line}");
        }
    }
    let me = tokio::task::block_in_place(|| access_line("fh-me"));
    assert_eq!(me["user_id"], user_id.as_str(), "the caller is named: {me}");
    assert!(tokio::task::block_in_place(|| access_line("fh-401")).get("user_id").is_none());

    let lines = served.snapshot();
    for request_id in ["fh-me", "fh-404", "fh-500"] {
        let count = lines
            .iter()
            .filter(|line| line.contains("storefront::access") && line.contains(&format!("\"{request_id}\"")))
            .count();
        assert_eq!(count, 1, "one access line for {request_id}");
    }
    assert!(!lines.iter().any(|line| line.contains(QUERY_SECRET)), "a query string reached the log: {lines:#?}");
    assert!(!lines.iter().any(|line| line.contains("Error encountered while processing")), "{lines:#?}");
    drop(served);

    // The pretty format has the same line, and no secret either.
    let mut command = serve_command(cwd.path(), &database, "pretty");
    command.env("RUST_LOG", "info");
    let served = tokio::task::spawn_blocking(move || ChildLog::spawn(command)).await.unwrap();
    let line = tokio::task::block_in_place(|| served.wait_for("at start", |l| l.contains("storefront is listening")));
    let port: u16 = line.split("port=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{port}/livez{secret}"))
        .header("x-request-id", "fh-pretty")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = tokio::task::block_in_place(|| {
        served.wait_for("for the pretty request", |l| l.contains("storefront::access") && l.contains("fh-pretty"))
    });
    for part in ["INFO", "method=GET", "route=/livez", "status=200", "duration_ms="] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(!served.snapshot().iter().any(|line| line.contains(QUERY_SECRET)));
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn yaml_documents(path: &str) -> Vec<Yaml> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|document| Yaml::deserialize(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn seconds(value: &Yaml) -> u64 {
    match value {
        Yaml::Number(n) => n.as_u64().unwrap(),
        Yaml::String(s) => s.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("seconds: {s}")),
        other => panic!("seconds: {other:?}"),
    }
}

fn env_value<'a>(env: &'a Yaml, name: &str) -> &'a Yaml {
    &env[name]
}

/// The files can't be run here (no container runtime), so their structure is checked: what
/// each needs, and that the numbers agree with each other and with the binary's settings.
#[test]
fn deploy_files_are_well_formed_and_agree_with_each_other() {
    let settings = known_settings();

    // Dockerfile and .dockerignore.
    let dockerfile = read("Dockerfile");
    for needed in ["VOLUME [\"/app/data\"]", "USER 10001:10001", "HEALTHCHECK", "EXPOSE 8080", "BIND_ADDR=0.0.0.0:8080"]
    {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed}");
    }
    // .dockerignore is an allow-list: everything is ignored first, then only what a COPY
    // names is let back in (deploy/validate.sh replays the build stage from that context).
    let dockerignore = read(".dockerignore");
    let patterns: Vec<_> =
        dockerignore.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).collect();
    assert_eq!(patterns.first(), Some(&"*"), "everything, the 5 GB target/ included, is ignored first");
    for allowed in patterns.iter().filter_map(|pattern| pattern.strip_prefix('!')) {
        let name = allowed.trim_end_matches('/');
        assert!(![".", "target", "data", ".env", ".git"].contains(&name), "{name} must stay out of the build context");
        let copied = dockerfile.lines().any(|line| {
            line.starts_with("COPY ") && line.split_whitespace().any(|word| word.trim_end_matches('/') == name)
        });
        assert!(copied, "{name} is let into the build context but no COPY uses it");
    }
    assert!(read("README.md").contains("-e JWT_SECRET="), "the README says how to start the production image");

    // compose.yaml: PostgreSQL, two replicas, a load balancer, health-checked start order.
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    assert!(services["postgres"]["healthcheck"]["test"].is_sequence());
    let lb = &services["lb"];
    let mut replicas = Vec::new();
    for name in ["app1", "app2"] {
        let app = &services[name];
        replicas.push(name);
        assert_eq!(app["depends_on"]["postgres"]["condition"], "service_healthy", "{name}");
        assert_eq!(lb["depends_on"][name]["condition"], "service_healthy", "lb waits for {name}");
        let probe: Vec<_> = app["healthcheck"]["test"].as_sequence().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert!(probe.iter().any(|part| part.ends_with("/readyz")), "{name} is healthy when ready: {probe:?}");
        let env = &app["environment"];
        for key in env.as_mapping().unwrap().keys() {
            assert!(settings.contains(key.as_str().unwrap()), "{name} sets unknown {key:?}");
        }
        let drain = seconds(env_value(env, "SHUTDOWN_DRAIN_SECONDS"));
        let timeout = seconds(env_value(env, "SHUTDOWN_TIMEOUT_SECONDS"));
        assert!(seconds(&app["stop_grace_period"]) >= drain + timeout, "{name}: grace covers drain + timeout");
        assert!(env["DATABASE_URL"].as_str().unwrap().starts_with("postgres://"));
        let lb_address = lb["networks"]["default"]["ipv4_address"].as_str().unwrap();
        assert_eq!(env["TRUSTED_PROXIES"], lb_address, "only the load balancer's X-Forwarded-For is trusted");
    }
    let mounted = lb["volumes"][0].as_str().unwrap();
    let config_path = mounted.split(':').next().unwrap().trim_start_matches("./");
    let haproxy = read(config_path);
    assert!(haproxy.contains("option httpchk GET /readyz"), "the balancer follows readiness");
    for name in &replicas {
        assert!(haproxy.contains(&format!("server {name} {name}:8080")), "haproxy balances over {name}");
    }
    let check = haproxy.lines().find(|line| line.contains("default-server check")).unwrap();
    let number_after = |word: &str| -> u64 {
        let rest = check.split(&format!("{word} ")).nth(1).unwrap();
        rest.split_whitespace().next().unwrap().trim_end_matches('s').parse().unwrap()
    };
    let drain = seconds(&services["app1"]["environment"]["SHUTDOWN_DRAIN_SECONDS"]);
    assert!(number_after("inter") * number_after("fall") <= drain, "a draining replica is out before it closes");
    let log_format = haproxy.lines().find(|line| line.trim_start().starts_with("log-format")).unwrap();
    assert!(!log_format.contains("%HU") && !log_format.contains("%r"), "haproxy logs no query string");

    // .env.example names what compose.yaml reads.
    let compose_text = read("compose.yaml");
    for line in read(".env.example").lines().filter(|line| !line.starts_with('#') && line.contains('=')) {
        let key = line.split('=').next().unwrap();
        assert!(compose_text.contains(&format!("${{{key}")), ".env.example's {key} is used by compose.yaml");
    }

    // Kubernetes.
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(ROOT).unwrap().to_str().unwrap().to_owned();
        for document in yaml_documents(&relative) {
            assert!(document["apiVersion"].is_string() && document["kind"].is_string(), "{relative}");
            kinds.insert(document["kind"].as_str().unwrap().to_owned(), document);
        }
    }
    let kustomization = &kinds["Kustomization"];
    for resource in kustomization["resources"].as_sequence().unwrap() {
        assert!(Path::new(ROOT).join("deploy/k8s").join(resource.as_str().unwrap()).exists(), "{resource:?}");
    }
    let deployment = &kinds["Deployment"];
    let pod = &deployment["spec"]["template"];
    let pod_labels = pod["metadata"]["labels"].as_mapping().unwrap();
    for (key, value) in deployment["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(pod_labels.get(key), Some(value), "the selector matches the pods");
    }
    let container = &pod["spec"]["containers"][0];
    let port_names: Vec<_> = container["ports"].as_sequence().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert!(port_names.contains(&container[probe]["httpGet"]["port"]), "{probe} uses a named container port");
    }
    let env: BTreeMap<String, Yaml> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|entry| (entry["name"].as_str().unwrap().to_owned(), entry["value"].clone()))
        .collect();
    for name in env.keys() {
        assert!(settings.contains(name), "the Deployment sets unknown {name}");
    }
    for secret in ["DATABASE_URL", "JWT_SECRET"] {
        assert!(env.contains_key(secret), "{secret} comes from the Secret");
    }
    let drain: u64 = env["SHUTDOWN_DRAIN_SECONDS"].as_str().unwrap().parse().unwrap();
    let timeout: u64 = env["SHUTDOWN_TIMEOUT_SECONDS"].as_str().unwrap().parse().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= pre_stop + drain + timeout, "grace {grace} covers preStop + drain + timeout");
    let readiness = &container["readinessProbe"];
    let noticed = readiness["periodSeconds"].as_u64().unwrap() * readiness["failureThreshold"].as_u64().unwrap();
    assert!(pre_stop + drain >= noticed, "readiness failure is noticed before the listener closes");
    for quantity in [&container["resources"]["requests"]["cpu"], &container["resources"]["requests"]["memory"]] {
        assert!(quantity.is_string(), "resource requests are set");
    }
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let service = &kinds["Service"];
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(pod_labels.get(key), Some(value), "the Service selects the pods");
    }
    assert!(port_names.contains(&service["spec"]["ports"][0]["targetPort"]), "the Service targets a named port");
    assert!(kinds.contains_key("Secret") && kinds.contains_key("PodDisruptionBudget"));
}
