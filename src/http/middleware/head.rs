//! `HEAD` on every `GET` route (RFC 9110 §9.3.2): the request is routed as a `GET`, and
//! actix's HTTP/1 codec, which remembers the request was a `HEAD`, sends the head of the
//! response (status, headers, `Content-Length`) without its body.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    Error,
};

pub async fn answer_head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}
