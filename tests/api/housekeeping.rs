//! The Janitor actor prunes what is kept only for a while, and nothing younger.

use std::time::Duration;

use crate::common::{Backend, TestApp};
use chrono::{NaiveDateTime, Utc};
use diesel::{sql_types::Timestamp, Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

on_both_backends!(expired_keys_events_failed_logins_and_credential_changes_are_pruned_and_fresh_ones_kept);

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Runs `sql` with one timestamp bound (`$1` on PostgreSQL, `?` on SQLite).
fn insert_at(url: &str, sql: &str, at: NaiveDateTime) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).unwrap();
        diesel::sql_query(sql.replace("$1", "?")).bind::<Timestamp, _>(at).execute(&mut conn).unwrap();
    } else {
        let mut conn = PgConnection::establish(url).unwrap();
        diesel::sql_query(sql).bind::<Timestamp, _>(at).execute(&mut conn).unwrap();
    }
}

fn count(url: &str, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    let rows: Vec<Count> = if let Some(path) = url.strip_prefix("sqlite://") {
        diesel::sql_query(sql).load(&mut SqliteConnection::establish(path).unwrap()).unwrap()
    } else {
        diesel::sql_query(sql).load(&mut PgConnection::establish(url).unwrap()).unwrap()
    };
    rows[0].n
}

async fn expired_keys_events_failed_logins_and_credential_changes_are_pruned_and_fresh_ones_kept(backend: Backend) {
    let app = TestApp::builder(backend).setting("janitor-interval-seconds", "1").spawn().await;
    let url = app.database_url.clone();
    let now = Utc::now().naive_utc();
    let hours_ago = |h: i64| now - chrono::Duration::hours(h);
    for (label, at) in [("old", hours_ago(49)), ("fresh", hours_ago(1))] {
        insert_at(
            &url,
            "INSERT INTO events (topic, kind, user_id, payload, created_at) VALUES ('products', 'product.updated', NULL, '{}', $1)",
            at,
        );
        insert_at(
            &url,
            &format!(
                "INSERT INTO idempotency_keys (user_id, scope, idempotency_key, fingerprint, response_status, response_body, created_at) \
                 VALUES ('u', 'order', '{label}', 'f', 201, '{{}}', $1)"
            ),
            at,
        );
    }
    insert_at(&url, "INSERT INTO login_failures (email, failed_at) VALUES ('a@example.com', $1)", hours_ago(2));
    insert_at(&url, "INSERT INTO login_failures (email, failed_at) VALUES ('a@example.com', $1)", now);
    // Past the hour's window, of an account (and an admin) that changed nothing since: no
    // later change of theirs would prune them.
    insert_at(&url, "INSERT INTO credential_changes (user_id, changed_at) VALUES ('quiet', $1)", hours_ago(2));
    insert_at(
        &url,
        "INSERT INTO credential_changes (user_id, kind, changed_at) VALUES ('admin', 'reset', $1)",
        hours_ago(2),
    );
    insert_at(&url, "INSERT INTO credential_changes (user_id, changed_at) VALUES ('busy', $1)", now);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let remaining = || {
        (
            count(&url, "events"),
            count(&url, "idempotency_keys"),
            count(&url, "login_failures"),
            count(&url, "credential_changes"),
        )
    };
    while remaining() != (1, 1, 1, 1) {
        assert!(tokio::time::Instant::now() < deadline, "not pruned in time: {:?}", remaining());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Fresh rows survive later sweeps too: one more old event, gone once a later sweep ran.
    insert_at(
        &url,
        "INSERT INTO events (topic, kind, user_id, payload, created_at) VALUES ('products', 'product.updated', NULL, '{}', $1)",
        hours_ago(49),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while count(&url, "events") != 1 {
        assert!(tokio::time::Instant::now() < deadline, "no later sweep ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining(), (1, 1, 1, 1));
}
