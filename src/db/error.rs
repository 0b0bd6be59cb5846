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
    /// A COMMIT failed: the change may or may not have been applied.
    #[display("the outcome of COMMIT is unknown")]
    CommitUncertain,
    /// Something broke inside; the message is for the log.
    #[display("{_0}")]
    Internal(String),
}

/// Why the database could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No connection could be had, or the one in use broke.
    ConnectionLost,
    /// The transaction conflicted with a concurrent one (a serialization failure).
    TransactionConflict,
    /// The readiness ping failed.
    PingFailed,
}

impl std::error::Error for DbError {}

impl DbError {
    /// An internal failure caused by `error`: the message keeps `context` and every
    /// `source()` of the chain.
    pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = format!("{context}: {error}");
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Internal(text)
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
