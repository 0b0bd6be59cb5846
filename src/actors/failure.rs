//! What the caller of a supervised actor is answered when the actor could not do the work.
//! Its own file because both the supervision and the messages every supervised actor
//! answers (`chaos::Crash`) name it.

use crate::db::{error::Unavailable, DbError};

/// Why a supervised actor did not do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, derive_more::Display)]
pub enum ActorFailure {
    /// It panicked doing it (and a fresh one takes its place).
    #[display("actor {actor} panicked")]
    Panicked { actor: &'static str },
    /// It crashed too often and waits out its restart backoff, running nothing.
    #[display("actor {actor} is waiting out its restart backoff")]
    BackingOff { actor: &'static str, retry_after_secs: u64 },
}

impl From<ActorFailure> for DbError {
    fn from(failure: ActorFailure) -> Self {
        match failure {
            ActorFailure::Panicked { actor } => Self::Internal(format!("actor {actor} panicked")),
            ActorFailure::BackingOff { actor, retry_after_secs } => {
                Self::Unavailable(Unavailable::ActorRestarting { actor, retry_after_secs })
            }
        }
    }
}
