//! A private redis-server for a test: its own free port and directory, so the test can
//! stop it and start it again. Without a `redis-server` binary the test prints SKIPPED
//! and passes, unless `REQUIRE_REDIS=1` (CI), which turns a missing server into a failure.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct RedisServer {
    binary: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Settings beyond the defaults, e.g. `--replicaof` for a read-only replica.
    extra: Vec<String>,
    process: Option<Child>,
}

fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("redis-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin/redis-server")).chain(on_path).find(|candidate| candidate.is_file())
}

/// A port nothing listens on (yet).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server, or `None` (with a loud SKIPPED) when there is no binary and CI
    /// does not require one.
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// Starts a server with more settings (`["--replicaof", "127.0.0.1", "1"]`, say).
    pub async fn start_with(extra: &[&str]) -> Option<Self> {
        let mut server = Self::on_port(free_port())?;
        server.extra = extra.iter().map(|arg| (*arg).to_owned()).collect();
        server.resume().await;
        Some(server)
    }

    /// A server for `port`, not started yet.
    pub fn on_port(port: u16) -> Option<Self> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var("REQUIRE_REDIS").map_or(true, |v| v != "1"),
                "REQUIRE_REDIS=1 but no redis-server binary (apt-get install redis-server)"
            );
            eprintln!("SKIPPED: Redis test (no redis-server binary; apt-get install redis-server to run it)");
            return None;
        };
        Some(Self { binary, port, dir: tempfile::tempdir().unwrap(), extra: Vec::new(), process: None })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port; nothing is persisted across restarts.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "redis-server is already running");
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not listen on {} in 10 s", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Freezes (`true`) or thaws the server: connections stay open, answers stop coming.
    pub fn freeze(&self, frozen: bool) {
        let child = self.process.as_ref().expect("redis-server is running");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
