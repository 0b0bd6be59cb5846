//! Connections: one diesel `MultiConnection` over PostgreSQL and SQLite, and our own r2d2
//! manager that picks the backend from the URL scheme (never diesel's derived fallback,
//! which hides an unreachable PostgreSQL behind "invalid connection url").

use std::time::Duration;

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
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConnection, ConnectError> {
        self.establish()
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), ConnectError> {
        conn.ping().map_err(|e| ConnectError { message: format!("connection check failed: {e}") })
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
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
    pub fn write_transaction<T, E, F>(&mut self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        if let DbConnection::Sqlite(inner) = self {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
            return match work(self) {
                Ok(value) => {
                    <DbConnection as Connection>::TransactionManager::commit_transaction(self)?;
                    Ok(value)
                }
                Err(error) => {
                    <DbConnection as Connection>::TransactionManager::rollback_transaction(self)?;
                    Err(error)
                }
            };
        }
        self.transaction(work)
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
