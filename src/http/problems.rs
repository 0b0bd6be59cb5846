//! The one table from what the lower layers answer to what a client is told: each refusal
//! of the rules, each database failure, each failure of an actor, a password check or a
//! token becomes an `AppError`, which names its problem type and status (see `error.rs`).
//! Nothing below `http` knows of either.

use crate::{
    actors::{failure::ActorFailure, password_hasher::PasswordError},
    auth::{password::HashError, tokens::TokenError},
    db::{error::Unavailable, DbError},
    domain::{
        refusal::{Missing, Refusal},
        shop::OrderRefusal,
        user::{ADMIN_RESET_LIMIT, CREDENTIAL_CHANGE_LIMIT},
        FieldError,
    },
    http::error::AppError,
};

impl From<Refusal> for AppError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(missing) => Self::NotFound(
                match missing {
                    Missing::Resource => "The resource does not exist.",
                    Missing::Account => "No such account.",
                    Missing::User => "No such user.",
                    Missing::Recipient => "No such recipient.",
                    Missing::Product => "No such product.",
                    Missing::Order => "No such order.",
                }
                .into(),
            ),
            Refusal::Order(refusal) => refusal.into(),
            Refusal::InsufficientFunds => insufficient_funds(),
            Refusal::DepositOverflowsBalance => Self::invalid("amount_cents", "would overflow the balance"),
            Refusal::TransferOverflowsRecipient => {
                Self::invalid("amount_cents", "would overflow the recipient's balance")
            }
            Refusal::ProductChanged => Self::PreconditionFailed,
            Refusal::OrderAlreadyCancelled => Self::conflict("The order is already cancelled."),
            Refusal::EmailTaken => Self::conflict("An account with this email already exists."),
            Refusal::LastAdmin => Self::Conflict {
                kind: "last-admin",
                detail: "This is the last admin; make another admin first.".into(),
                extensions: serde_json::Map::new(),
            },
            Refusal::SignInsThrottled { retry_after_secs } => Self::TooManyRequests {
                retry_after_secs,
                detail: "Too many failed sign-ins for this email; try again later.".into(),
            },
            Refusal::CredentialChangesThrottled { retry_after_secs } => Self::TooManyRequests {
                retry_after_secs,
                detail: format!(
                    "This account's password or email was changed {CREDENTIAL_CHANGE_LIMIT} times within the last \
                     hour; try again later."
                ),
            },
            Refusal::CredentialResetsThrottled { retry_after_secs } => Self::TooManyRequests {
                retry_after_secs,
                detail: format!(
                    "You reset other users' passwords or emails {ADMIN_RESET_LIMIT} times within the last hour; try \
                     again later."
                ),
            },
            Refusal::AuthorizationVoided => Self::Unauthorized(
                "The access token is no longer valid: a password, email or role changed while this request was under \
                 way."
                    .into(),
            ),
            Refusal::IdempotencyKeyReused => {
                Self::Unprocessable("This Idempotency-Key was already used with a different request.".into())
            }
            Refusal::IdempotencyKeyInUse => {
                Self::conflict("A request with this Idempotency-Key is still being processed.")
            }
        }
    }
}

impl From<OrderRefusal> for AppError {
    fn from(refusal: OrderRefusal) -> Self {
        match refusal {
            OrderRefusal::UnavailableProducts { lines } => {
                let mut errors: Vec<FieldError> = lines
                    .into_iter()
                    .map(|index| FieldError::new(format!("items[{index}].product_id"), "is not an active product"))
                    .collect();
                // As text, the order clients have always been given (items[10] before items[2]).
                errors.sort_by(|a, b| a.field.cmp(&b.field));
                Self::Validation(errors)
            }
            OrderRefusal::InsufficientStock { product_ids } => Self::Conflict {
                kind: "insufficient-stock",
                detail: "Some products do not have enough stock.".into(),
                extensions: serde_json::Map::from_iter([("product_ids".to_owned(), serde_json::json!(product_ids))]),
            },
            OrderRefusal::TotalTooLarge => Self::invalid("items", "the order total is too large"),
            OrderRefusal::InsufficientFunds => insufficient_funds(),
        }
    }
}

impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Refused(refusal) => refusal.into(),
            DbError::Unavailable(why) => why.into(),
            DbError::OutcomeUnknown => Self::OutcomeUnknown,
            DbError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<Unavailable> for AppError {
    fn from(why: Unavailable) -> Self {
        let (retry_after_secs, detail) = match why {
            Unavailable::ConnectionLost => (1, "The database is unavailable; try again shortly.".into()),
            Unavailable::TransactionConflict => (1, "The request conflicted with a concurrent one; try again.".into()),
            Unavailable::PingFailed => (1, "The database is unavailable.".into()),
            Unavailable::AtCapacity => (1, "The service is at capacity; try again shortly.".into()),
            Unavailable::BreakerOpen { retry_after_secs } => {
                (retry_after_secs, "The database is unavailable (circuit breaker open); try again shortly.".into())
            }
            Unavailable::WorkersRestarting { retry_after_secs } => (
                retry_after_secs,
                "The database workers are restarting after repeated crashes; try again shortly.".into(),
            ),
            Unavailable::ActorRestarting { actor, retry_after_secs } => (
                retry_after_secs,
                format!("The {actor} actor is restarting after repeated crashes; try again shortly."),
            ),
            Unavailable::Abandoned => (1, "The request was abandoned before it ran.".into()),
            Unavailable::TimedOut => {
                (1, "The database did not answer in time; nothing was changed, try again shortly.".into())
            }
            Unavailable::NotStartedYet => (1, "The cache has no database yet.".into()),
        };
        Self::Unavailable { retry_after_secs, detail }
    }
}

impl From<ActorFailure> for AppError {
    fn from(failure: ActorFailure) -> Self {
        match failure {
            ActorFailure::Panicked { actor } => Self::Internal(format!("actor {actor} panicked")),
            ActorFailure::BackingOff { actor, retry_after_secs } => {
                Unavailable::ActorRestarting { actor, retry_after_secs }.into()
            }
        }
    }
}

impl From<PasswordError> for AppError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::Restarting { retry_after_secs } => Self::Unavailable {
                retry_after_secs,
                detail: "Password checks are restarting after repeated crashes; try again shortly.".into(),
            },
            PasswordError::Busy => Self::unavailable("Too many sign-ins at once; try again shortly."),
            PasswordError::TimedOut => Self::unavailable("Password check timed out; try again shortly."),
            PasswordError::MailboxClosed => Self::Internal("password hasher mailbox closed".into()),
            PasswordError::Actor(failure) => failure.into(),
            PasswordError::Hash(error) => error.into(),
        }
    }
}

impl From<HashError> for AppError {
    fn from(error: HashError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<TokenError> for AppError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Invalid => Self::Unauthorized("The access token is missing, invalid or expired.".into()),
            TokenError::Unsigned(cause) => Self::internal("cannot sign token", &cause),
        }
    }
}

fn insufficient_funds() -> AppError {
    AppError::Conflict {
        kind: "insufficient-funds",
        detail: "The balance is too low for this.".into(),
        extensions: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(error: impl Into<AppError>) -> (u16, String, String) {
        let problem = error.into().to_problem().finish("/api/v1/auth/login", "request");
        (problem.status, problem.type_uri, problem.detail)
    }

    #[test]
    fn failures_of_password_checks_and_tokens_are_told_as_before() {
        let told_as = |status: u16, kind: &str, detail: &str| {
            (status, format!("urn:storefront:problem:{kind}"), detail.to_owned())
        };
        assert_eq!(
            told(PasswordError::Busy),
            told_as(503, "unavailable", "Too many sign-ins at once; try again shortly.")
        );
        assert_eq!(
            told(PasswordError::TimedOut),
            told_as(503, "unavailable", "Password check timed out; try again shortly.")
        );
        assert_eq!(
            told(PasswordError::Actor(ActorFailure::Panicked { actor: "password_hasher" })),
            told_as(500, "internal", "The server could not complete the request.")
        );
        assert_eq!(
            told(TokenError::Invalid),
            told_as(401, "unauthorized", "The access token is missing, invalid or expired.")
        );
    }
}
