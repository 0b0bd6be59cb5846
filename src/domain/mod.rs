//! Domain rules: plain types and functions with no actix or diesel in them.

pub mod clock;
pub mod paging;
pub mod user;
