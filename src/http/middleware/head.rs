//! `HEAD` on every `GET` route (RFC 9110 §9.3.2): the request is routed as a `GET`, and
//! actix's HTTP/1 codec, which remembers the request was a `HEAD`, sends the head of the
//! response (status, headers, `Content-Length`) without its body.

use actix_web::{dev::ServiceRequest, http::Method};

/// Runs first, so every later step (routing, metrics, the access line) sees a `GET`.
pub fn route_as_get(req: &mut ServiceRequest) {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
}
