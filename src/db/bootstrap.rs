//! The first connection of a command (`serve`, `migrate`, `user create`): it waits, with
//! backoff and for at most `DB_STARTUP_RETRY_SECONDS`, for a PostgreSQL that is not up yet
//! (compose and Kubernetes start everything at once), and creates a missing database when
//! asked to and the user may, the way `createdb` would.

use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

use super::connection::{ConnectError, ConnectionManager, DbConnection};
use crate::config::{DatabaseConfig, DatabaseUrl};

/// What to do when the database itself does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it (an empty SQLite file, or `CREATE DATABASE` on PostgreSQL).
    Create,
    /// Touch nothing and answer `None`: for read-only commands such as `migrate status`.
    LeaveAlone,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Opens the database, or `None` when it does not exist and `if_missing` says to leave it.
pub fn open(config: &DatabaseConfig, if_missing: IfMissing) -> Result<Option<DbConnection>, ConnectError> {
    let manager = ConnectionManager::new(config);
    match &config.url {
        DatabaseUrl::Sqlite { path } => {
            if !path.exists() {
                if if_missing == IfMissing::LeaveAlone {
                    return Ok(None);
                }
                tracing::info!(path = %path.display(), "SQLite database did not exist: creating it");
            }
            manager.establish().map(Some)
        }
        DatabaseUrl::Postgres { url } => open_postgres(&manager, url, config, if_missing),
    }
}

fn open_postgres(
    manager: &ConnectionManager,
    url: &str,
    config: &DatabaseConfig,
    if_missing: IfMissing,
) -> Result<Option<DbConnection>, ConnectError> {
    let started = Instant::now();
    let deadline = started + config.startup_retry;
    let mut backoff = FIRST_BACKOFF;
    let mut created = false;
    loop {
        let error = match manager.establish() {
            Ok(conn) => return Ok(Some(conn)),
            Err(error) => error,
        };
        match classify(&error.message) {
            Failure::MissingDatabase if !created && if_missing == IfMissing::Create => {
                create_database(url, config.connect_timeout)?;
                created = true;
                continue;
            }
            Failure::MissingDatabase if if_missing == IfMissing::LeaveAlone => return Ok(None),
            Failure::NotUpYet if Instant::now() < deadline => {
                if backoff == FIRST_BACKOFF {
                    tracing::warn!(
                        error = %error.message,
                        retry_for_seconds = config.startup_retry.as_secs(),
                        "PostgreSQL is not reachable yet; retrying"
                    );
                } else {
                    tracing::debug!(error = %error.message, "PostgreSQL still not reachable; retrying");
                }
                std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Failure::NotUpYet if !config.startup_retry.is_zero() => {
                let waited = started.elapsed().as_secs();
                return Err(ConnectError { message: format!("{} (gave up after {waited} s)", error.message) });
            }
            _ => return Err(error),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server answered: this database does not exist.
    MissingDatabase,
    /// No server to talk to (refused, unresolvable, timed out) or one still starting.
    NotUpYet,
    /// The server refused us for good: authentication, permissions, a bad option.
    Permanent,
}

/// libpq reports what the server said as `FATAL: …`; anything else is the network.
fn classify(message: &str) -> Failure {
    if message.contains("database \"") && message.contains("does not exist") {
        return Failure::MissingDatabase;
    }
    let transient_server_states = ["starting up", "shutting down", "in recovery", "too many clients"];
    if message.contains("FATAL") && !transient_server_states.iter().any(|state| message.contains(state)) {
        return Failure::Permanent;
    }
    Failure::NotUpYet
}

/// `CREATE DATABASE` over the server's maintenance database, with the same credentials.
fn create_database(url: &str, connect_timeout: Duration) -> Result<(), ConnectError> {
    let invalid = || ConnectError { message: "DATABASE_URL does not name a database".into() };
    let mut parsed = url::Url::parse(url).map_err(|_| invalid())?;
    let name = parsed
        .path_segments()
        .and_then(|mut segments| segments.next())
        .map(percent_decode)
        .filter(|name| !name.is_empty())
        .ok_or_else(invalid)?;
    let cannot_create = |why: &str| ConnectError {
        message: format!(
            "PostgreSQL database \"{name}\" does not exist and could not be created ({why}); \
             create it with `createdb {name}` or use a user that may create databases"
        ),
    };
    let mut last_error = String::new();
    let mut admin = None;
    for maintenance in ["postgres", "template1"] {
        parsed.set_path(maintenance);
        let admin_url = with_timeout(parsed.as_str(), connect_timeout);
        match PgConnection::establish(&admin_url) {
            Ok(conn) => {
                admin = Some(conn);
                break;
            }
            Err(error) => last_error = first_line(&error.to_string()).to_owned(),
        }
    }
    let mut admin = admin.ok_or_else(|| cannot_create(&last_error))?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(format!("CREATE DATABASE {quoted}")).execute(&mut admin) {
        Ok(_) => {
            tracing::info!(database = %name, "PostgreSQL database did not exist: created it");
            Ok(())
        }
        // Another replica starting at the same moment won the race: just as good.
        Err(error) if error.to_string().contains("already exists") || error.to_string().contains("duplicate key") => {
            Ok(())
        }
        Err(error) => Err(cannot_create(first_line(&error.to_string()))),
    }
}

fn with_timeout(url: &str, timeout: Duration) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    if url.contains("connect_timeout=") {
        url.to_owned()
    } else {
        format!("{url}{separator}connect_timeout={}", timeout.as_secs().max(2))
    }
}

/// A URL path segment as text (`%41` → `A`; a `+` stays a `+`, unlike in a query).
fn percent_decode(segment: &str) -> String {
    url::form_urlencoded::parse(format!("n={}", segment.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| segment.to_owned(), |(_, value)| value.into_owned())
}

fn first_line(text: &str) -> &str {
    text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("unknown error")
}

#[cfg(test)]
mod tests {
    use super::{classify, Failure};

    #[test]
    fn libpq_messages_are_told_apart() {
        let refused = "cannot connect to PostgreSQL: connection to server at \"127.0.0.1\", port 1 failed: \
                       Connection refused";
        assert_eq!(classify(refused), Failure::NotUpYet);
        let starting = "connection to server at \"db\", port 5432 failed: FATAL:  the database system is starting up";
        assert_eq!(classify(starting), Failure::NotUpYet);
        let missing = "connection to server at \"db\", port 5432 failed: FATAL:  database \"shop\" does not exist";
        assert_eq!(classify(missing), Failure::MissingDatabase);
        let auth = "connection to server at \"db\", port 5432 failed: FATAL:  password authentication failed";
        assert_eq!(classify(auth), Failure::Permanent);
        let role = "connection to server at \"db\", port 5432 failed: FATAL:  role \"shop\" does not exist";
        assert_eq!(classify(role), Failure::Permanent);
    }
}
