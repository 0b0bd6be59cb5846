//! Domain rules: plain types and functions with no actix or diesel in them.

pub mod catalog;
pub mod clock;
pub mod money;
pub mod paging;
pub mod rate_limit;
pub mod shop;
pub mod user;
