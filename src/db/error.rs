//! What a database operation answers when it does not give its output: a refusal by the
//! rules (the request's own fault), or a failure of the database (nobody's request's).
//! `http` decides how each is shown to a client.

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::domain::{
    refusal::{Missing, Refusal},
    shop::OrderRefusal,
};

#[derive(Debug, derive_more::Display)]
pub enum DbError {
    /// The rules refuse the request; nothing was changed.
    #[display("refused: {_0:?}")]
    Refused(Refusal),
    /// The database could not be used, or could not be used now; nothing was changed and
    /// the same request may succeed shortly.
    #[display("database unavailable: {_0:?}")]
    Unavailable(Unavailable),
    /// A write may or may not have been applied: its COMMIT failed, or its caller stopped
    /// waiting while it ran.
    #[display("the outcome of the write is unknown")]
    OutcomeUnknown,
    /// Something broke inside; the message is for the log.
    #[display("{_0}")]
    Internal(String),
}

/// Why the database could not be used (here, or by the executors that run its use cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No connection could be had, or the one in use broke.
    ConnectionLost,
    /// The transaction conflicted with a concurrent one (a serialization failure).
    TransactionConflict,
    /// The readiness ping failed.
    PingFailed,
    /// Every executor is busy and the admission queue is full.
    AtCapacity,
    /// The circuit breaker is open after repeated connection failures.
    BreakerOpen { retry_after_secs: u64 },
    /// Every executor crashed too often and waits out its restart backoff.
    WorkersRestarting { retry_after_secs: u64 },
    /// The named actor crashed too often and waits out its restart backoff.
    ActorRestarting { actor: &'static str, retry_after_secs: u64 },
    /// The caller stopped waiting before the work started; it never will.
    Abandoned,
    /// No executor answered in time, and the work was withdrawn before it started.
    TimedOut,
    /// Asked before the database side was started.
    NotStartedYet,
}

impl std::error::Error for DbError {}

impl DbError {
    /// An internal failure caused by `error`: the message keeps `context` and every
    /// `source()` of the chain.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        Self::Internal(crate::error_chain::describe(context, error))
    }
}

impl From<Refusal> for DbError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl From<OrderRefusal> for DbError {
    fn from(refusal: OrderRefusal) -> Self {
        Self::Refused(Refusal::Order(refusal))
    }
}

impl From<DieselError> for DbError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::NotFound => Self::Refused(Refusal::NotFound(Missing::Resource)),
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                info,
            ) => {
                tracing::warn!(error = %info.message(), "database connection lost");
                Self::Unavailable(Unavailable::ConnectionLost)
            }
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, info) => {
                tracing::warn!(error = %info.message(), "transaction conflict");
                Self::Unavailable(Unavailable::TransactionConflict)
            }
            other => Self::internal("database error", &other),
        }
    }
}
