//! Writes every error response as problem+json: our own `AppError`s (which leave a
//! `Problem` in the response extensions) and the framework's (404, 405, CORS, ...), which
//! get a problem built from their status. Headers such as `Allow` and `Retry-After` stay.

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{self, HeaderValue},
    middleware::Next,
    Error, HttpMessage,
};

use super::request_id::RequestId;
use crate::error::Problem;

pub const PROBLEM_JSON: &str = "application/problem+json";

pub async fn render_problems(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // Routing needs the request unshared, so keep (cheap, shared) copies of what a problem needs.
    let uri = req.uri().clone();
    let request_id = req.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
    let response = match next.call(req).await {
        Ok(response) => response.map_into_boxed_body(),
        // Handlers, extractors and CORS answer errors as responses; an inner layer that
        // fails outright still leaves as a problem, though without the outer headers.
        Err(error) => {
            let status = error.as_response_error().status_code();
            let problem = Problem::for_status(status).finish(uri.path(), &request_id);
            return Err(RenderedProblem(problem).into());
        }
    };
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(response);
    }
    let ours = response.response().extensions().get::<Problem>().cloned();
    let problem = match ours {
        Some(problem) => problem,
        // A JSON error body written on purpose (the 503 of /readyz) is left as it is.
        None if super::is_json(response.headers()) => return Ok(response),
        None => Problem::for_status(status),
    };
    let problem = problem.finish(uri.path(), &request_id);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = response.map_body(|_, _| BoxBody::new(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Ok(response)
}

/// A finished problem travelling as an error past the layers that could not answer it.
#[derive(Debug, derive_more::Display)]
#[display("{}", _0.title)]
struct RenderedProblem(Problem);

impl actix_web::ResponseError for RenderedProblem {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.0.status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        actix_web::HttpResponse::build(self.status_code()).content_type(PROBLEM_JSON).json(&self.0)
    }
}
