//! `storefront serve` as a child process, for what only a separate process shows: its
//! memory (`/proc/<pid>/status`), its open-file limit, and its log.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use super::{JWT_SECRET, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_storefront");

pub struct ChildServer {
    child: Child,
    pub address: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    log: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl ChildServer {
    /// Starts the server on `database_url` with `settings` (environment variables), under
    /// an open-file limit of `open_files` when given (soft and hard).
    pub async fn start(database_url: &str, settings: &[(&str, &str)], open_files: Option<u32>) -> Self {
        let mut command = match open_files {
            // `ulimit -n` in sh sets both limits, so the server cannot raise them.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" serve"), BIN]);
                shell
            }
            None => {
                let mut direct = Command::new(BIN);
                direct.arg("serve");
                direct
            }
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("JWT_SECRET", JWT_SECRET)
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        for (key, value) in settings {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start storefront");
        let lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(record) = serde_json::from_str::<Value>(&line) {
                    if sender.send(record).is_err() {
                        return;
                    }
                }
            }
        });
        let mut server = Self {
            child,
            address: "127.0.0.1:0".parse().expect("an address"),
            base: String::new(),
            client: reqwest::Client::new(),
            log,
            seen: Vec::new(),
        };
        let listening = server.log_line("storefront is listening").await;
        let port = listening["port"].as_u64().expect("a port") as u16;
        server.address = SocketAddr::from(([127, 0, 0, 1], port));
        server.base = format!("http://{}", server.address);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while server.get("/readyz").await.status() != 200 {
            assert!(tokio::time::Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// The first log record whose message contains `text` (waiting for it).
    pub async fn log_line(&mut self, text: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(found) = self.seen.iter().find(|record| record["message"].as_str().unwrap_or("").contains(text))
            {
                return found.clone();
            }
            match self.log.try_recv() {
                Ok(record) => self.seen.push(record),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(tokio::time::Instant::now() < deadline, "no log line containing {text:?}: {:?}", self.seen);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!("the server exited; its log: {:?}", self.seen),
            }
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.base)).send().await.expect("the server answers")
    }

    /// The server's resident memory now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// A value from `/metrics` (the exact series, labels included); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Registers and signs in a user; answers (id, token).
    pub async fn user(&self, email: &str) -> (String, String) {
        let registered = self
            .client
            .post(format!("{}/api/v1/auth/register", self.base))
            .json(&serde_json::json!({"email": email, "password": PASSWORD, "name": "Someone"}))
            .send()
            .await
            .expect("register");
        assert_eq!(registered.status(), 201);
        let id = registered.json::<Value>().await.expect("user")["id"].as_str().expect("id").to_owned();
        let token = self.sign_in(email).await;
        (id, token)
    }

    pub async fn sign_in(&self, email: &str) -> String {
        let signed_in = self
            .client
            .post(format!("{}/api/v1/auth/login", self.base))
            .json(&serde_json::json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(signed_in.status(), 200, "sign-in answers");
        signed_in.json::<Value>().await.expect("token")["access_token"].as_str().expect("a token").to_owned()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
