//! Writes every error response as problem+json: our own `AppError`s (which leave a
//! `Problem` in the response extensions) and the framework's (404, 405, CORS, ...), which
//! get a problem built from their status. Headers such as `Allow` and `Retry-After` stay.

use actix_web::{
    body::BoxBody,
    dev::ServiceResponse,
    http::header::{self, HeaderValue},
    Error,
};

use crate::http::error::Problem;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// `path` and `request_id` become the problem's `instance` and `request_id`.
pub fn render(response: ServiceResponse<BoxBody>, path: &str, request_id: &str) -> ServiceResponse<BoxBody> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let ours = response.response().extensions().get::<Problem>().cloned();
    let problem = match ours {
        Some(problem) => problem,
        // A JSON error body written on purpose (the 503 of /readyz) is left as it is.
        None if super::is_json(response.headers()) => return response,
        None => Problem::for_status(status),
    };
    let problem = problem.finish(path, request_id);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = response.map_body(|_, _| BoxBody::new(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// An inner layer that failed outright leaves no request to answer with: its error
/// travels on as this finished problem, which actix renders, with the headers every
/// response carries.
pub fn render_failure(error: &Error, path: &str, request_id: &str) -> Error {
    let status = error.as_response_error().status_code();
    RenderedProblem(Problem::for_status(status).finish(path, request_id)).into()
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
        let mut response = actix_web::HttpResponse::build(self.status_code()).content_type(PROBLEM_JSON).json(&self.0);
        let headers = response.headers_mut();
        super::security_headers::add(headers);
        if let Ok(id) = HeaderValue::from_str(&self.0.request_id) {
            headers.insert(super::request_id::REQUEST_ID_HEADER.clone(), id);
        }
        response
    }
}
