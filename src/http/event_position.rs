//! The `Event-Position` response header of reads of outbox-backed resources: an outbox id
//! such that every committed change the answer does not reflect has a larger id (see
//! `actors::event_position`), so a client that subscribes with `"since"` set to it misses
//! nothing.

use actix_web::{
    http::header::{HeaderName, HeaderValue},
    HttpResponse,
};
use serde::Serialize;

use crate::actors::event_position::Positioned;

pub const EVENT_POSITION: HeaderName = HeaderName::from_static("event-position");

/// The header, for `insert_header`.
pub fn header(position: i64) -> (HeaderName, HeaderValue) {
    (EVENT_POSITION, HeaderValue::from(position))
}

/// 200 with the read's value as JSON and its position.
pub fn ok_json<T: Serialize>(read: Positioned<T>) -> HttpResponse {
    HttpResponse::Ok().insert_header(header(read.position)).json(read.value)
}
