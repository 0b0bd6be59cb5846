//! The ops dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, started here on a free port). An admin signs in on the page, sees every
//! actor, a panic is injected through the API, and the page shows that actor's restart
//! count go up without a reload; then a crash loop, and the page shows the actor backing
//! off. The screenshots land under target/, or, with `UPDATE_SCREENSHOTS=1`, replace the
//! ones in docs/ that the README shows.
//!
//! Without Chromium and chromedriver the test prints SKIPPED and passes, unless
//! `REQUIRE_BROWSER=1` (CI), which turns a missing browser into a failure.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{Backend, TestApp, EVERY_ACTOR, PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const BROWSERS: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const DRIVER: &str = "/usr/bin/chromedriver";
fn browser() -> Option<PathBuf> {
    let found = BROWSERS.iter().map(PathBuf::from).find(|path| path.exists()).filter(|_| Path::new(DRIVER).exists());
    if found.is_none() {
        assert!(
            std::env::var("REQUIRE_BROWSER").map_or(true, |v| v != "1"),
            "REQUIRE_BROWSER=1 but chromium or {DRIVER} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: ops dashboard browser test (apt-get install chromium chromium-driver to run it)");
    }
    found
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/status", driver.url)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not start listening");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_browser(driver: &Driver, binary: &Path, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

async fn text_of(browser: &Client, css: &str) -> Option<String> {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.ok(),
        Err(_) => None,
    }
}

/// Polls the page (no reload) until `css` shows `expected`.
async fn wait_for_text(browser: &Client, css: &str, expected: impl Fn(&str) -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = text_of(browser, css).await;
        if text.as_deref().is_some_and(&expected) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {css} shows {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a screenshot goes: the target directory, so a test run leaves the checkout as it
/// found it, unless `UPDATE_SCREENSHOTS=1` asks for the README's pictures to be refreshed.
fn screenshot(file: &str) -> PathBuf {
    let directory = if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|value| value == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&directory).unwrap();
    directory.join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_a_panicked_actor_restart_on_the_live_page() {
    let Some(binary) = browser() else { return };
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, admin) = app.admin("operator@example.com").await;
    // Steady traffic while the page watches, so its charts have something to draw: list
    // reads, cached product reads, and misses for products that do not exist.
    let product = {
        let body = json!({"name": "Widget", "price_cents": 250, "stock": 5});
        let created: serde_json::Value =
            app.send_json(reqwest::Method::POST, "/api/v1/products", &admin, &body).await.json().await.unwrap();
        created["id"].as_str().unwrap().to_owned()
    };
    let traffic = {
        let (client, base) = (app.client.clone(), app.address.clone());
        tokio::spawn(async move {
            for round in 0u64.. {
                let path = match round % 4 {
                    0 => "/api/v1/products".to_owned(),
                    3 => format!("/api/v1/products/{}", uuid::Uuid::now_v7()),
                    _ => format!("/api/v1/products/{product}"),
                };
                let _ = client.get(format!("{base}{path}")).send().await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = open_browser(&driver, &binary, profile.path()).await;
    browser.set_window_size(1280, 1180).await.unwrap();
    browser.goto(&app.url("/ops/")).await.unwrap();

    browser.wait().for_element(Locator::Css("#email")).await.unwrap().send_keys("operator@example.com").await.unwrap();
    browser.find(Locator::Css("#password")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    browser.find(Locator::Css("#sign-in-button")).await.unwrap().click().await.unwrap();

    for actor in EVERY_ACTOR {
        let row = format!(r#"#actors-body tr[data-actor="{actor}"] .restart-count"#);
        wait_for_text(&browser, &row, |text| text == "0", &format!("{actor} is listed")).await;
    }
    let token: serde_json::Value =
        browser.execute("return sessionStorage.getItem('storefront.ops.token')", vec![]).await.unwrap();
    assert!(token.as_str().is_some_and(|token| token.split('.').count() == 3), "the token is in sessionStorage");
    wait_for_text(&browser, "#ready-pill", |text| text == "ready", "readiness shown").await;
    wait_for_text(&browser, "#breaker-badge", |text| text == "breaker closed", "breaker shown").await;
    wait_for_text(&browser, "#live-pill", |text| text.starts_with("live updates:"), "live status shown").await;
    let chaos = browser.find(Locator::Css("#chaos")).await.unwrap();
    assert!(chaos.is_displayed().await.unwrap(), "CHAOS_TOKEN is set: the fault buttons show");

    wait_for_text(&browser, r#"[data-chart="rps"] .chart-value"#, |text| text.ends_with("/s"), "request chart").await;
    // A few reads first, so the screenshot's charts have a shape (no timing is asserted).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let points = browser.find(Locator::Css("#charts")).await.unwrap().attr("data-points").await.unwrap();
        if points.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p >= 5) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the charts never collected five points");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(app.chaos(json!({"actor": "cache", "fault": "panic"})).await.status(), 500);

    let cache = r#"#actors-body tr[data-actor="cache"]"#;
    wait_for_text(&browser, &format!("{cache} .restart-count"), |text| text == "1", "the cache restart shows").await;
    let class = browser.find(Locator::Css(cache)).await.unwrap().attr("class").await.unwrap();
    assert!(class.is_some_and(|class| class.contains("restarted")), "the restarted row is highlighted");
    wait_for_text(
        &browser,
        "#restarts li",
        |text| text.contains("cache") && text.contains("fault injected"),
        "timeline",
    )
    .await;
    let other = text_of(&browser, r#"#actors-body tr[data-actor="rate_limiter"] .restart-count"#).await;
    assert_eq!(other.as_deref(), Some("0"), "only the crashed actor's count moved");
    let limiter = text_of(&browser, r#"#actors-body tr[data-actor="rate_limiter"] td.facts"#).await.unwrap_or_default();
    assert!(limiter.contains("mode local") && limiter.contains("granted"), "the limiter's mode and leases: {limiter}");
    // A crash loop: the cache panics on every read, goes past its restart intensity and
    // backs off; the row and the timeline (from the ops topic) say so.
    let crash_loop = json!({"actor": "cache", "fault": "crash_loop", "millis": 60_000});
    assert_eq!(app.chaos(crash_loop).await.status(), 204);
    wait_for_text(&browser, &format!("{cache} .badge.backing-off"), |text| text == "backing off", "backing off shows")
        .await;
    wait_for_text(
        &browser,
        r#"#restarts li[data-kind="actor.backing_off"]"#,
        |text| text.contains("cache") && text.contains("backing off"),
        "the ops topic's actor.backing_off on the timeline",
    )
    .await;
    assert_eq!(app.chaos(json!({"actor": "cache", "fault": "clear"})).await.status(), 204);
    let violations: serde_json::Value =
        browser.execute("return document.body.dataset.cspViolations || '0'", vec![]).await.unwrap();
    assert_eq!(violations, "0", "the page runs under its policy without violations");

    let laptop = screenshot("ops-dashboard.png");
    std::fs::write(&laptop, browser.screenshot().await.unwrap()).unwrap();
    browser.set_window_size(400, 1600).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the layout settle before the picture
    let phone = screenshot("ops-dashboard-phone.png");
    std::fs::write(&phone, browser.screenshot().await.unwrap()).unwrap();
    eprintln!("screenshots: {} and {}", laptop.display(), phone.display());
    browser.close().await.unwrap();
    traffic.abort();
}
