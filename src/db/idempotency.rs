//! Idempotency keys. A keyed request claims its key, runs its effect and stores the
//! answer in one transaction. A replay with the same body gets the stored answer, which
//! this module keeps without reading it (the caller's `FirstAnswer` writes it); the same
//! key with another body is refused. A refusal by the rules is stored too (it is the first
//! answer); a failure stores nothing, so a retry runs again.

use std::{sync::Arc, time::Duration};

use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    connection::CommitUncertain,
    kept_prepared::KeepPrepared,
    outbox::{NewEvent, Outbox},
    schema::idempotency_keys as keys,
    DbConnection,
};
use crate::{
    db::DbError,
    domain::{clock, refusal::Refusal},
};

/// A claim (left by the earlier two-step scheme) older than this belongs to a request
/// that died; a retry may take it over.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// What identifies one keyed request, and how its first answer is kept.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub user_id: Uuid,
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    pub answers: Arc<dyn FirstAnswer>,
}

/// A stored answer: opaque to this module, which keeps it and gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// How the caller's first answer is written down, so that a replay is the very answer
/// first given: the caller (the HTTP layer) knows what a client was sent.
pub trait FirstAnswer: std::fmt::Debug + Send + Sync {
    /// The answer to a request whose effect produced `body` (its output, as JSON).
    fn done(&self, body: String) -> Answer;
    /// The answer to a request the rules refused.
    fn refused(&self, refusal: &Refusal) -> Answer;
}

impl IdempotencyKey {
    fn primary_key(&self) -> (String, &str, &str) {
        (self.user_id.to_string(), &self.scope, &self.key)
    }
}

pub enum Outcome<T> {
    Fresh(T),
    Replay(Answer),
}

/// What an effect wrote: its answer, and the events that describe its changes, which
/// `run_once` appends last, after every row lock is taken (see `outbox`).
pub struct Written<T> {
    pub value: T,
    pub events: Vec<NewEvent>,
}

/// Runs `effect` in a write transaction, at most once per key.
///
/// The claim, the effect and the stored response share ONE transaction (a refusal is
/// stored in a second one, see `store_refusal`), so a request
/// that fails before its effect commits (a lost connection, a server error) leaves no
/// trace and a retry runs afresh as soon as the database is back; a COMMIT whose outcome
/// is unknown is `CommitUncertain` and a retry finds either the stored response or nothing. On
/// PostgreSQL a concurrent duplicate is refused at once (`IdempotencyKeyInUse`) by a transaction-scoped
/// advisory lock on the key; SQLite's `BEGIN IMMEDIATE` makes it wait for the first
/// and then replay its answer.
pub fn run_once<T, F>(
    conn: &mut DbConnection,
    outbox: &mut Outbox,
    key: Option<&IdempotencyKey>,
    effect: F,
) -> Result<Outcome<T>, DbError>
where
    T: Serialize,
    F: FnOnce(&mut DbConnection) -> Result<Written<T>, DbError>,
{
    let Some(key) = key else {
        return conn.write_transaction(|conn| {
            let Written { value, events } = effect(conn)?;
            outbox.append(conn, events)?;
            Ok(Outcome::Fresh(value))
        });
    };
    let attempt = conn.write_transaction(|conn| {
        if let Some(answer) = claim(conn, key)? {
            return Ok(Outcome::Replay(answer));
        }
        let Written { value, events } = effect(conn).map_err(Attempt::Effect)?;
        let body = serde_json::to_string(&value).map_err(|e| DbError::internal("encode response", &e))?;
        store(conn, key, &key.answers.done(body))?;
        outbox.append(conn, events)?;
        Ok(Outcome::Fresh(value))
    });
    match attempt {
        Ok(outcome) => Ok(outcome),
        Err(Attempt::Effect(DbError::Refused(refusal))) => store_refusal(conn, key, refusal),
        Err(Attempt::Effect(error) | Attempt::Failed(error)) => Err(error),
    }
}

/// Why the keyed transaction was rolled back: its effect's error, or any other.
enum Attempt {
    Effect(DbError),
    Failed(DbError),
}

impl From<DbError> for Attempt {
    fn from(error: DbError) -> Self {
        Self::Failed(error)
    }
}

impl From<DieselError> for Attempt {
    fn from(error: DieselError) -> Self {
        Self::Failed(error.into())
    }
}

impl From<CommitUncertain> for Attempt {
    fn from(error: CommitUncertain) -> Self {
        Self::Failed(error.into())
    }
}

/// The first answer is the answer, refusals by the rules included. The effect's
/// transaction was rolled back whole (a savepoint around every effect would cost two
/// round trips on every request), so the refusal is stored in a transaction of its own —
/// unless another request with the key answered in between: then that is the answer.
fn store_refusal<T>(conn: &mut DbConnection, key: &IdempotencyKey, refusal: Refusal) -> Result<Outcome<T>, DbError> {
    let replay = conn.write_transaction(|conn| {
        if let Some(answer) = claim(conn, key)? {
            return Ok(Some(Outcome::Replay(answer)));
        }
        store(conn, key, &key.answers.refused(&refusal))?;
        Ok::<_, DbError>(None)
    })?;
    replay.ok_or(DbError::Refused(refusal))
}

/// Claims the key for this transaction (a row without an answer, which `store` fills in),
/// or answers the earlier request's stored answer. Refused while another
/// transaction holds the key.
fn claim(conn: &mut DbConnection, key: &IdempotencyKey) -> Result<Option<Answer>, DbError> {
    if let DbConnection::Postgres(pg) = conn {
        if claim_on_postgres(pg, key)? {
            return Ok(None);
        }
    }
    // SQLite (serialised by `BEGIN IMMEDIATE`), or a PostgreSQL key that is taken: the
    // earlier answer decides.
    if let Some(answer) = earlier_answer(conn, key)? {
        return Ok(Some(answer));
    }
    diesel::insert_into(keys::table)
        .values((
            keys::user_id.eq(key.user_id.to_string()),
            keys::scope.eq(&key.scope),
            keys::idempotency_key.eq(&key.key),
            keys::fingerprint.eq(&key.fingerprint),
            keys::created_at.eq(clock::now()),
        ))
        .execute(conn)
        // Only a replica of an older version, which takes no lock, can get here first.
        .map_err(|error| match error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => still_running(),
            other => other.into(),
        })?;
    Ok(None)
}

/// One round trip: take a transaction-scoped advisory lock on the key (refusing
/// when another transaction holds it, i.e. the first request is still running), then
/// insert the claim unless a row for the key exists. True when claimed. The lock comes
/// first, so a row found afterwards is committed and the caller reads its answer.
fn claim_on_postgres(conn: &mut PgConnection, key: &IdempotencyKey) -> Result<bool, DbError> {
    /// The advisory lock class of idempotency keys (the two-key form never collides with
    /// the one-key locks used elsewhere).
    const LOCK_CLASS: i32 = 0x4944_4b59; // "IDKY"
    const CLAIM: &str = "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($1, $2) AS locked), \
         claim AS (INSERT INTO idempotency_keys (user_id, scope, idempotency_key, fingerprint, created_at) \
                   SELECT $3, $4, $5, $6, $7 FROM lock WHERE locked ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT locked, EXISTS (SELECT 1 FROM claim) AS claimed FROM lock";
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        claimed: bool,
    }
    use diesel::sql_types::{Integer, Text, Timestamp};
    let digest = Sha256::new()
        .chain_update(key.user_id.as_bytes())
        .chain_update(key.scope.as_bytes())
        .chain_update([0])
        .chain_update(key.key.as_bytes())
        .finalize();
    let object = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let row: Claimed = diesel::sql_query(CLAIM)
        .bind::<Integer, _>(LOCK_CLASS)
        .bind::<Integer, _>(object)
        .bind::<Text, _>(key.user_id.to_string())
        .bind::<Text, _>(&key.scope)
        .bind::<Text, _>(&key.key)
        .bind::<Text, _>(&key.fingerprint)
        .bind::<Timestamp, _>(clock::now())
        .keep_prepared()
        .get_result(conn)?;
    if !row.locked {
        return Err(still_running());
    }
    Ok(row.claimed)
}

/// The stored answer of an earlier request with this key, if there is one.
fn earlier_answer(conn: &mut DbConnection, key: &IdempotencyKey) -> Result<Option<Answer>, DbError> {
    let existing: Option<(String, Option<i32>, Option<String>, chrono::NaiveDateTime)> = keys::table
        .find(key.primary_key())
        .select((keys::fingerprint, keys::response_status, keys::response_body, keys::created_at))
        .first(conn)
        .optional()?;
    match existing {
        None => Ok(None),
        Some((fingerprint, _, _, _)) if fingerprint != key.fingerprint => Err(Refusal::IdempotencyKeyReused.into()),
        Some((_, Some(status), Some(body), _)) => {
            Ok(Some(Answer { status: u16::try_from(status).unwrap_or(500), body }))
        }
        // A claim without an answer was left by the earlier two-step scheme (a replica of
        // an older version during a rolling deploy): running, or dead once old enough.
        Some((_, _, _, claimed_at))
            if clock::now() - claimed_at
                < chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or(chrono::Duration::MAX) =>
        {
            Err(still_running())
        }
        Some(_) => {
            diesel::delete(keys::table.find(key.primary_key())).execute(conn)?;
            Ok(None)
        }
    }
}

/// Records the answer in this transaction's claim.
fn store(conn: &mut DbConnection, key: &IdempotencyKey, answer: &Answer) -> Result<(), DbError> {
    diesel::update(keys::table.find(key.primary_key()))
        .set((keys::response_status.eq(Some(i32::from(answer.status))), keys::response_body.eq(Some(&answer.body))))
        .returning(keys::response_status)
        .keep_prepared()
        .load::<Option<i32>>(conn)?;
    Ok(())
}

fn still_running() -> DbError {
    Refusal::IdempotencyKeyInUse.into()
}
