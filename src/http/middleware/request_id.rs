//! Gives every request an id: the client's `X-Request-Id` when it is safe to echo
//! (at most 64 chars of `[A-Za-z0-9._-]`), else a fresh UUID v7. The envelope hands it to
//! the span, problems, the access line and the response; code running on the request's
//! behalf reads it from `request_context`.

use std::sync::Arc;

use actix_web::{
    dev::ServiceRequest,
    http::header::{HeaderName, HeaderValue},
};
use uuid::{timestamp::context::ContextV7, Timestamp, Uuid};

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

pub fn is_acceptable(candidate: &str) -> bool {
    (1..=64).contains(&candidate.len())
        && candidate.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Orders the fresh ids of one HTTP worker. Each worker's `App` gets its own (it is not
/// `Sync`, and need not be): `Uuid::now_v7` would take one process-wide lock per request,
/// which every worker would contend for.
#[derive(Default)]
pub struct RequestIds(ContextV7);

/// The request's id, and the same id as the response header. `ids` is this worker's
/// sequence; without one (an `App` built without it) ids come from `Uuid::now_v7`.
pub fn assign(req: &ServiceRequest, ids: Option<&RequestIds>) -> (Arc<str>, Option<HeaderValue>) {
    let sent = req.headers().get(&REQUEST_ID_HEADER).and_then(|value| Some(value).zip(value.to_str().ok()));
    let (id, header) = match sent.filter(|(_, text)| is_acceptable(text)) {
        // The client's own header value is shared, not copied.
        Some((value, text)) => (Arc::<str>::from(text), Some(value.clone())),
        None => {
            let mut buffer = Uuid::encode_buffer();
            let id = ids.map_or_else(Uuid::now_v7, |ids| Uuid::new_v7(Timestamp::now(&ids.0)));
            let text = id.hyphenated().encode_lower(&mut buffer);
            (Arc::<str>::from(&*text), HeaderValue::from_str(text).ok())
        }
    };
    (id, header)
}

#[cfg(test)]
mod tests {
    use super::is_acceptable;

    #[test]
    fn only_short_safe_ids_are_kept() {
        assert!(is_acceptable("abc-123_X.y"));
        assert!(is_acceptable(&"a".repeat(64)));
        assert!(!is_acceptable(&"a".repeat(65)));
        assert!(!is_acceptable(""));
        assert!(!is_acceptable("has space"));
        assert!(!is_acceptable("semi;colon"));
    }
}
