//! Embedded migrations for both backends, and the `migrate` operations on them.

use diesel::{connection::SimpleConnection, migration::MigrationSource, pg::Pg, sqlite::Sqlite};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::connection::DbConnection;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Replicas starting together on one PostgreSQL take turns migrating under this lock.
const MIGRATION_LOCK_KEY: i64 = 0x5354_4f52_4546_524e; // "STOREFRN"

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: String,
    pub applied: bool,
}

/// Applies every pending migration and returns the versions applied.
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, BoxError> {
    let applied = match conn {
        DbConnection::Sqlite(c) => {
            c.run_pending_migrations(SQLITE_MIGRATIONS)?.iter().map(ToString::to_string).collect()
        }
        DbConnection::Postgres(c) => with_pg_lock(c, |c| {
            Ok(c.run_pending_migrations(POSTGRES_MIGRATIONS)?.iter().map(ToString::to_string).collect())
        })?,
    };
    Ok(applied)
}

/// Reverts the most recent migration and returns its version.
pub fn revert_last(conn: &mut DbConnection) -> Result<String, BoxError> {
    let reverted = match conn {
        DbConnection::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS)?.to_string(),
        DbConnection::Postgres(c) => {
            with_pg_lock(c, |c| Ok(c.revert_last_migration(POSTGRES_MIGRATIONS)?.to_string()))?
        }
    };
    Ok(reverted)
}

/// Every known migration in order, with whether it is applied.
pub fn status(conn: &mut DbConnection) -> Result<Vec<MigrationState>, BoxError> {
    let (known, applied) = match conn {
        DbConnection::Sqlite(c) => (
            MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS)?
                .iter()
                .map(|m| m.name().version().to_string())
                .collect::<Vec<_>>(),
            c.applied_migrations()?.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ),
        DbConnection::Postgres(c) => (
            MigrationSource::<Pg>::migrations(&POSTGRES_MIGRATIONS)?
                .iter()
                .map(|m| m.name().version().to_string())
                .collect::<Vec<_>>(),
            c.applied_migrations()?.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ),
    };
    Ok(known.into_iter().map(|version| MigrationState { applied: applied.contains(&version), version }).collect())
}

/// Every migration the binary knows for this backend, oldest first (no connection needed).
pub fn known_versions(url: &crate::config::DatabaseUrl) -> Vec<String> {
    let versions = match url {
        crate::config::DatabaseUrl::Sqlite { .. } => MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS)
            .map(|known| known.iter().map(|m| m.name().version().to_string()).collect()),
        crate::config::DatabaseUrl::Postgres { .. } => MigrationSource::<Pg>::migrations(&POSTGRES_MIGRATIONS)
            .map(|known| known.iter().map(|m| m.name().version().to_string()).collect()),
    };
    versions.unwrap_or_default()
}

fn with_pg_lock<T>(
    conn: &mut diesel::PgConnection,
    work: impl FnOnce(&mut diesel::PgConnection) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
    let outcome = work(conn);
    conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
    outcome
}
