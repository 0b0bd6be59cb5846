//! Gives every request an id: the client's `X-Request-Id` when it is safe to echo
//! (at most 64 chars of `[A-Za-z0-9._-]`), else a fresh UUID v7. The envelope hands it to
//! the span, problems, the access line and the response; code running on the request's
//! behalf reads it from `request_context`.

use std::sync::Arc;

use actix_web::{
    dev::ServiceRequest,
    http::header::{HeaderName, HeaderValue},
};
use uuid::{
    timestamp::context::{ContextV7, ThreadLocalContext},
    Timestamp, Uuid,
};

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

pub fn is_acceptable(candidate: &str) -> bool {
    (1..=64).contains(&candidate.len())
        && candidate.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

thread_local! {
    static ID_SEQUENCE: ContextV7 = const { ContextV7::new() };
}
/// Each thread orders its own ids; `Uuid::now_v7` would take one process-wide lock per
/// request, which both HTTP workers would contend for.
static ID_CONTEXT: ThreadLocalContext<ContextV7> = ThreadLocalContext::new(&ID_SEQUENCE);

/// The request's id, and the same id as the response header.
pub fn assign(req: &ServiceRequest) -> (Arc<str>, Option<HeaderValue>) {
    let sent = req.headers().get(&REQUEST_ID_HEADER).and_then(|value| Some(value).zip(value.to_str().ok()));
    let (id, header) = match sent.filter(|(_, text)| is_acceptable(text)) {
        // The client's own header value is shared, not copied.
        Some((value, text)) => (Arc::<str>::from(text), Some(value.clone())),
        None => {
            let mut buffer = Uuid::encode_buffer();
            let text = Uuid::new_v7(Timestamp::now(&ID_CONTEXT)).hyphenated().encode_lower(&mut buffer);
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
