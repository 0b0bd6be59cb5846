//! Idempotency keys. A keyed request first claims its key in a short transaction (so a
//! concurrent duplicate sees it and gets 409), then runs its effect and stores the
//! response in the effect's own transaction. A replay with the same body gets the stored
//! status and body; the same key with another body gets 422. A client error is stored
//! too (it is the first response); a server error releases the key for a retry.

use std::time::Duration;

use actix_web::ResponseError;
use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
};
use serde::Serialize;
use uuid::Uuid;

use super::{schema::idempotency_keys as keys, DbConnection};
use crate::{domain::clock, error::AppError};

/// A claim older than this belongs to a request that died; a retry may take it over.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// What identifies one keyed request, and where its first answer was given.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub user_id: Uuid,
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    /// For rendering a stored error exactly as it was first sent.
    pub request_id: String,
    pub instance: String,
}

impl IdempotencyKey {
    fn primary_key(&self) -> (String, &str, &str) {
        (self.user_id.to_string(), &self.scope, &self.key)
    }
}

pub enum Outcome<T> {
    Fresh(T),
    Replay { status: u16, body: String },
}

/// Runs `effect` in a write transaction, at most once per key.
pub fn run_once<T, F>(
    conn: &mut DbConnection,
    key: Option<&IdempotencyKey>,
    status: u16,
    effect: F,
) -> Result<Outcome<T>, AppError>
where
    T: Serialize,
    F: FnOnce(&mut DbConnection) -> Result<T, AppError>,
{
    let Some(key) = key else {
        return conn.write_transaction(effect).map(Outcome::Fresh);
    };
    if let Some((status, body)) = claim(conn, key)? {
        return Ok(Outcome::Replay { status, body });
    }
    let outcome: Result<T, AppError> = conn.write_transaction(|conn| {
        let value = effect(conn)?;
        let body = serde_json::to_string(&value).map_err(|e| AppError::Internal(format!("encode response: {e}")))?;
        store_response(conn, key, status, &body)?;
        Ok(value)
    });
    match outcome {
        Ok(value) => Ok(Outcome::Fresh(value)),
        Err(error) if error.status_code().is_client_error() => {
            let problem = error.to_problem().finish(&key.instance, &key.request_id);
            let body = serde_json::to_string(&problem).unwrap_or_default();
            conn.write_transaction(|conn| store_response(conn, key, problem.status, &body))?;
            Err(error)
        }
        Err(error) => {
            if let Err(release) = release(conn, key) {
                tracing::error!(error = %release, "could not release an idempotency key");
            }
            Err(error)
        }
    }
}

/// Claims the key, or answers from what an earlier request with it left.
fn claim(conn: &mut DbConnection, key: &IdempotencyKey) -> Result<Option<(u16, String)>, AppError> {
    conn.write_transaction(|conn| {
        let existing: Option<(String, Option<i32>, Option<String>, chrono::NaiveDateTime)> = keys::table
            .find(key.primary_key())
            .select((keys::fingerprint, keys::response_status, keys::response_body, keys::created_at))
            .first(conn)
            .optional()?;
        let now = clock::now();
        match existing {
            None => {
                diesel::insert_into(keys::table)
                    .values((
                        keys::user_id.eq(key.user_id.to_string()),
                        keys::scope.eq(&key.scope),
                        keys::idempotency_key.eq(&key.key),
                        keys::fingerprint.eq(&key.fingerprint),
                        keys::created_at.eq(now),
                    ))
                    .execute(conn)
                    // On PostgreSQL a concurrent first request can insert between our
                    // read and our insert: it is running, so this one is the duplicate.
                    .map_err(|error| match error {
                        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => still_running(),
                        other => other.into(),
                    })?;
                Ok(None)
            }
            Some((fingerprint, _, _, _)) if fingerprint != key.fingerprint => {
                Err(AppError::Unprocessable("This Idempotency-Key was already used with a different request.".into()))
            }
            Some((_, Some(status), Some(body), _)) => Ok(Some((u16::try_from(status).unwrap_or(500), body))),
            Some((_, _, _, claimed_at))
                if now - claimed_at < chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or(chrono::Duration::MAX) =>
            {
                Err(still_running())
            }
            Some((_, _, _, claimed_at)) => {
                // Take over an abandoned claim, unless another retry just did.
                let taken = diesel::update(keys::table.find(key.primary_key()))
                    .filter(keys::created_at.eq(claimed_at))
                    .filter(keys::response_status.is_null())
                    .set(keys::created_at.eq(now))
                    .execute(conn)?;
                if taken == 0 {
                    return Err(still_running());
                }
                Ok(None)
            }
        }
    })
}

fn still_running() -> AppError {
    AppError::conflict("A request with this Idempotency-Key is still being processed.")
}

fn store_response(conn: &mut DbConnection, key: &IdempotencyKey, status: u16, body: &str) -> Result<(), AppError> {
    diesel::update(keys::table.find(key.primary_key()))
        .set((keys::response_status.eq(Some(i32::from(status))), keys::response_body.eq(Some(body))))
        .execute(conn)?;
    Ok(())
}

fn release(conn: &mut DbConnection, key: &IdempotencyKey) -> Result<(), AppError> {
    diesel::delete(keys::table.find(key.primary_key())).execute(conn)?;
    Ok(())
}
