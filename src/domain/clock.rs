//! The service's notion of "now".

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

/// Now in UTC, truncated to microseconds: the precision PostgreSQL keeps, so a value read
/// back equals the value written on both backends (ETags and tests depend on it).
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// A stored UTC timestamp as the API shows it.
pub fn to_utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}
