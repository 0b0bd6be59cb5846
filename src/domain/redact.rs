//! Debug output that shows a secret is there without showing it: request bodies with
//! passwords, responses with tokens and rows with password hashes are printed by `{:?}`
//! in logs, panics and test failures, none of which may carry the secret itself.

use std::fmt;

/// Stands in for a secret in Debug output.
pub struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `None`, or `Some([redacted])`: whether an optional secret was given, and nothing more.
pub fn optional<T>(secret: &Option<T>) -> Option<Redacted> {
    secret.as_ref().map(|_| Redacted)
}
