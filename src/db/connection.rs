//! Connections: one diesel `MultiConnection` over PostgreSQL and SQLite, and our own r2d2
//! manager that picks the backend from the URL scheme (never diesel's derived fallback,
//! which hides an unreachable PostgreSQL behind "invalid connection url").

use std::{
    ops::{Deref, DerefMut},
    time::{Duration, Instant},
};

use diesel::{
    connection::{AnsiTransactionManager, SimpleConnection, TransactionManager},
    prelude::*,
    r2d2::R2D2Connection,
};

use crate::config::{DatabaseConfig, DatabaseUrl};

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

pub type DbPool = r2d2::Pool<ConnectionManager>;
pub type PooledConnection = r2d2::PooledConnection<ConnectionManager>;

/// Why a connection could not be made: the message is safe to show an operator
/// (credentials are never part of it).
#[derive(Debug, derive_more::Display, derive_more::Error)]
#[display("{message}")]
pub struct ConnectError {
    #[error(not(source))]
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: DatabaseUrl,
    connect_timeout: Duration,
}

/// SQLite waits this long for a lock held by another connection before failing.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

impl ConnectionManager {
    pub fn new(config: &DatabaseConfig) -> Self {
        Self { url: config.url.clone(), connect_timeout: config.connect_timeout }
    }

    pub fn establish(&self) -> Result<DbConnection, ConnectError> {
        match &self.url {
            DatabaseUrl::Postgres { url } => {
                let url = with_connect_timeout(url, self.connect_timeout);
                PgConnection::establish(&url).map(DbConnection::Postgres).map_err(|e| ConnectError {
                    message: format!("cannot connect to PostgreSQL: {}", first_line(&e.to_string())),
                })
            }
            DatabaseUrl::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| ConnectError {
                        message: format!("cannot create SQLite directory {}: {e}", dir.display()),
                    })?;
                }
                let path_text =
                    path.to_str().ok_or_else(|| ConnectError { message: "SQLite path is not UTF-8".into() })?;
                let mut conn = SqliteConnection::establish(path_text).map_err(|e| ConnectError {
                    message: format!("cannot open SQLite database {}: {e}", path.display()),
                })?;
                // Order matters: the busy timeout must be in place before WAL is switched on,
                // and pragmas only take effect outside a transaction.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
                ))
                .map_err(|e| ConnectError {
                    message: format!("cannot configure SQLite database {}: {e}", path.display()),
                })?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    /// A round trip on `conn`: whether the server answers.
    pub fn check(conn: &mut DbConnection) -> Result<(), ConnectError> {
        conn.ping().map_err(|e| ConnectError { message: format!("connection check failed: {e}") })
    }
}

/// A connection that was handed back to the pool in working order this recently is lent
/// out again without a check: under load that saves a round trip (`SELECT 1`) per use
/// case. One that died meanwhile fails its use case with 503 (`unavailable`, nothing
/// done) and is dropped by `has_broken`; an idle one is checked as before, so after an
/// outage the pool's old connections are replaced before any request sees them.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// A pooled connection, and when it was last known to work.
pub struct PoolConnection {
    conn: DbConnection,
    known_good_at: Instant,
}

impl Deref for PoolConnection {
    type Target = DbConnection;
    fn deref(&self) -> &DbConnection {
        &self.conn
    }
}

impl DerefMut for PoolConnection {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.conn
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = PoolConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<PoolConnection, ConnectError> {
        Ok(PoolConnection { conn: self.establish()?, known_good_at: Instant::now() })
    }

    fn is_valid(&self, conn: &mut PoolConnection) -> Result<(), ConnectError> {
        if conn.known_good_at.elapsed() < TRUSTED_FOR {
            return Ok(());
        }
        Self::check(&mut conn.conn)?;
        conn.known_good_at = Instant::now();
        Ok(())
    }

    /// Called as a connection comes back: diesel marks it broken once a round trip found
    /// the server gone (libpq's transaction status turns unknown) or a transaction could
    /// not be ended; otherwise it just worked.
    fn has_broken(&self, conn: &mut PoolConnection) -> bool {
        if conn.conn.is_broken() {
            return true;
        }
        conn.known_good_at = Instant::now();
        false
    }
}

/// Logs pool errors through tracing once, at warn, instead of r2d2's default error log.
#[derive(Debug)]
struct PoolErrorLogger;

impl r2d2::HandleError<ConnectError> for PoolErrorLogger {
    fn handle_error(&self, error: ConnectError) {
        tracing::warn!(error = %error, "database connection attempt failed");
    }
}

pub fn build_pool(config: &DatabaseConfig) -> DbPool {
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(0))
        .connection_timeout(config.connect_timeout)
        .error_handler(Box::new(PoolErrorLogger))
        // Connections are made on demand: start-up already proved the database reachable.
        .build_unchecked(ConnectionManager::new(config))
}

impl DbConnection {
    /// A read-then-write transaction. On SQLite it begins `IMMEDIATE`, taking the write
    /// lock up front: a deferred transaction that upgrades its lock fails with SQLITE_BUSY
    /// at once instead of waiting. PostgreSQL uses an ordinary transaction.
    ///
    /// An error from `COMMIT` itself is `CommitUncertain`: the server may have committed
    /// before the connection broke, so the caller must not say that nothing happened.
    pub fn write_transaction<T, E, F>(&mut self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E>,
        E: From<diesel::result::Error> + From<CommitUncertain>,
    {
        type Manager = <DbConnection as Connection>::TransactionManager;
        match self {
            DbConnection::Sqlite(inner) => AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?,
            DbConnection::Postgres(_) => Manager::begin_transaction(self)?,
        }
        match work(self) {
            Ok(value) => match Manager::commit_transaction(self) {
                Ok(()) => Ok(value),
                Err(error) => {
                    tracing::warn!(%error, "COMMIT failed; the transaction may or may not have been applied");
                    Err(CommitUncertain.into())
                }
            },
            Err(error) => {
                if let Err(rollback) = Manager::rollback_transaction(self) {
                    // The connection is marked broken and leaves the pool; the work's own
                    // error is what the caller needs to hear.
                    tracing::warn!(error = %rollback, "ROLLBACK failed");
                }
                Err(error)
            }
        }
    }
}

/// `COMMIT` failed: whether the transaction took effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, derive_more::Display)]
#[display("the outcome of COMMIT is unknown")]
pub struct CommitUncertain;

impl From<CommitUncertain> for super::DbError {
    fn from(_: CommitUncertain) -> Self {
        Self::OutcomeUnknown
    }
}

fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    // libpq counts whole seconds and treats anything below 2 as 2.
    let seconds = timeout.as_secs().max(2);
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={seconds}")
}

fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("unknown error")
}

#[cfg(test)]
mod tests {
    use diesel::{connection::SimpleConnection, sql_query, RunQueryDsl};

    use super::*;

    fn sqlite_in_memory() -> DbConnection {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(
            "PRAGMA foreign_keys = ON; CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        DbConnection::Sqlite(conn)
    }

    #[derive(Debug, PartialEq)]
    enum Failure {
        Database,
        Uncertain,
    }

    impl From<diesel::result::Error> for Failure {
        fn from(_: diesel::result::Error) -> Self {
            Failure::Database
        }
    }

    impl From<CommitUncertain> for Failure {
        fn from(_: CommitUncertain) -> Self {
            Failure::Uncertain
        }
    }

    #[test]
    fn an_error_at_commit_is_an_unknown_outcome_not_a_plain_failure() {
        let mut conn = sqlite_in_memory();
        // A deferred foreign key is checked at COMMIT, so COMMIT itself fails.
        let outcome = conn.write_transaction(|conn| {
            sql_query("INSERT INTO child (parent_id) VALUES (42)").execute(conn)?;
            Ok::<_, Failure>(())
        });
        assert_eq!(outcome, Err(Failure::Uncertain));
        let failed_work = conn.write_transaction(|conn| {
            sql_query("INSERT INTO nowhere VALUES (1)").execute(conn)?;
            Ok::<_, Failure>(())
        });
        assert_eq!(failed_work, Err(Failure::Database), "an error before COMMIT is an ordinary failure");
        assert_eq!(conn.write_transaction(|_| Ok::<_, Failure>(7)), Ok(7), "the connection is usable afterwards");
    }
}
