//! A PostgreSQL server of a test's own (initdb + pg_ctl in a temp dir on a free port), for
//! tests that must stop and restart the database under a running service.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

pub struct PostgresServer {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(program: &str) -> Command {
    // initdb refuses to run as root; the cluster belongs to the postgres user.
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", &format!("{BIN_DIR}/{program}")]);
    command
}

fn run(mut command: Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(output.status.success(), "{what} failed: {}", String::from_utf8_lossy(&output.stderr));
}

impl PostgresServer {
    /// Whether this machine can run a private cluster; CI (REQUIRE_POSTGRES=1) insists.
    pub fn available() -> bool {
        let present = Path::new(BIN_DIR).join("initdb").exists();
        if !present {
            assert!(
                std::env::var("REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
                "REQUIRE_POSTGRES=1 but {BIN_DIR} has no initdb"
            );
            eprintln!("SKIPPED: no PostgreSQL binaries in {BIN_DIR}");
        }
        present
    }

    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("storefront-pg-").tempdir_in("/tmp").expect("temp dir");
        run(
            {
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(dir.path());
                c
            },
            "chown cluster dir",
        );
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
        let server = Self { dir, port };
        run(
            {
                let mut c = as_postgres("initdb");
                c.args(["-A", "trust", "-U", "postgres", "-D"]).arg(server.data_dir());
                c
            },
            "initdb",
        );
        server.start_again();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let mut command = as_postgres("pg_ctl");
        command
            .args(["-w", "-D"])
            .arg(self.data_dir())
            .args(["-o", &options, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start");
        run(command, "pg_ctl start");
    }

    pub fn stop(&self) {
        self.stop_in("fast");
    }

    /// Stops as a crash would: no backend rolls back, so no lock is released on the way
    /// down and nothing waiting on one can slip through to a commit.
    pub fn crash(&self) {
        self.stop_in("immediate");
    }

    fn stop_in(&self, mode: &str) {
        let mut command = as_postgres("pg_ctl");
        command.args(["-w", "-m", mode, "-D"]).arg(self.data_dir()).arg("stop");
        run(command, "pg_ctl stop");
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let mut command = as_postgres("pg_ctl");
        command.args(["-m", "immediate", "-D"]).arg(self.data_dir()).arg("stop");
        let _ = command.output();
    }
}
