//! Why a request is refused: the answers the rules give, named by what went wrong, not by
//! how a protocol shows it (`http` turns each into a problem).

use super::shop::OrderRefusal;

/// What a request named that does not exist (or is not the requester's to see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A row the request depended on, of no particular kind.
    Resource,
    Account,
    User,
    Recipient,
    Product,
    Order,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound(Missing),
    Order(OrderRefusal),
    /// The balance does not cover the amount.
    InsufficientFunds,
    /// A deposit would take the balance past what a balance can hold.
    DepositOverflowsBalance,
    /// A transfer would take the recipient's balance past what a balance can hold.
    TransferOverflowsRecipient,
    /// The product changed since the version the request was based on.
    ProductChanged,
    OrderAlreadyCancelled,
    EmailTaken,
    /// Demoting or deleting the last admin would leave no one to administer.
    LastAdmin,
    /// Too many failed sign-ins for an email; the next may come after `retry_after_secs`.
    SignInsThrottled {
        retry_after_secs: u64,
    },
    /// An account's password or email changed as often as a window allows.
    CredentialChangesThrottled {
        retry_after_secs: u64,
    },
    /// An admin reset other users' passwords or emails as often as a window allows.
    CredentialResetsThrottled {
        retry_after_secs: u64,
    },
    /// The caller's token was voided (a password, email or role change, or deletion)
    /// while the request was under way.
    AuthorizationVoided,
    /// An idempotency key sent again with a different request.
    IdempotencyKeyReused,
    /// An idempotency key whose first request is still running.
    IdempotencyKeyInUse,
}

impl From<OrderRefusal> for Refusal {
    fn from(refusal: OrderRefusal) -> Self {
        Self::Order(refusal)
    }
}
