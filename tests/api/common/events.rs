//! Reading the transactional outbox (the `events` table) straight from a test's database,
//! the way a relay or a second replica would see it.

use diesel::{
    sql_types::{BigInt, Nullable, Text},
    Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection,
};
use serde_json::Value;

/// One committed outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub topic: String,
    pub kind: String,
    /// The owner of a private event (`orders`, `account`); `None` for public topics.
    pub user_id: Option<String>,
    pub payload: Value,
}

#[derive(QueryableByName)]
struct EventRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    topic: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = Text)]
    payload: String,
}

const ALL_EVENTS: &str = "SELECT id, topic, kind, user_id, payload FROM events ORDER BY id";

/// Every row of `events`, oldest first.
pub fn read_events(database_url: &str) -> Vec<Event> {
    let rows: Vec<EventRow> = if let Some(path) = database_url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).expect("open the test's SQLite database");
        // The server may be writing at the same moment: wait for its lock instead of failing.
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).expect("set busy_timeout");
        diesel::sql_query(ALL_EVENTS).load(&mut conn).expect("read events from SQLite")
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let mut conn = PgConnection::establish(database_url).expect("connect to the test's PostgreSQL database");
        diesel::sql_query(ALL_EVENTS).load(&mut conn).expect("read events from PostgreSQL")
    } else {
        panic!("unsupported database URL: {database_url}")
    };
    rows.into_iter()
        .map(|row| Event {
            id: row.id,
            topic: row.topic,
            kind: row.kind,
            user_id: row.user_id,
            payload: serde_json::from_str(&row.payload)
                .unwrap_or_else(|error| panic!("event {} has a payload that is not JSON: {error}", row.id)),
        })
        .collect()
}

/// Runs one statement on the test's database, the way an operator at a SQL prompt would.
pub fn execute(database_url: &str, sql: &str) {
    if let Some(path) = database_url.strip_prefix("sqlite://") {
        let mut conn = SqliteConnection::establish(path).expect("open the test's SQLite database");
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).expect("set busy_timeout");
        diesel::sql_query(sql).execute(&mut conn).expect("run SQL on SQLite");
    } else {
        let mut conn = PgConnection::establish(database_url).expect("connect to the test's PostgreSQL database");
        diesel::sql_query(sql).execute(&mut conn).expect("run SQL on PostgreSQL");
    }
}
