//! The `Idempotency-Key` header: turning it into a key the database layer honours, and a
//! stored first response back into the very same response.

use std::sync::Arc;

use actix_web::{
    http::{header, StatusCode},
    HttpRequest, HttpResponse,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    db::idempotency::{Answer, FirstAnswer, IdempotencyKey, Outcome},
    domain::refusal::Refusal,
    http::error::AppError,
    http::middleware::problem::PROBLEM_JSON,
};

const HEADER: &str = "idempotency-key";
pub const MAX_KEY_CHARS: usize = 255;
/// What `is_valid_key` accepts, as a regular expression (stated in the OpenAPI document).
pub const KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// 1 to 255 visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    (1..=MAX_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The request's key, if it sent one. `scope` names the operation (and its target), and
/// `body` is the parsed request, so whitespace or field order do not change the fingerprint.
pub fn key_of(
    request: &HttpRequest,
    user_id: Uuid,
    scope: String,
    body: &impl Serialize,
) -> Result<Option<IdempotencyKey>, AppError> {
    let Some(value) = request.headers().get(HEADER) else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|key| is_valid_key(key))
        .ok_or_else(|| AppError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?;
    let canonical = serde_json::to_vec(body).map_err(|e| AppError::internal("encode request", &e))?;
    let digest = Sha256::new().chain_update(scope.as_bytes()).chain_update([0]).chain_update(&canonical).finalize();
    let fingerprint = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    let request_id = crate::request_context::current().map(|id| id.to_string()).unwrap_or_default();
    let answers = first_response(request.path(), &request_id);
    Ok(Some(IdempotencyKey { user_id, scope, key: key.to_owned(), fingerprint, answers }))
}

/// How a request at `instance` with `request_id` keeps its first answer.
pub fn first_response(instance: &str, request_id: &str) -> Arc<dyn FirstAnswer> {
    Arc::new(FirstResponse { instance: instance.to_owned(), request_id: request_id.to_owned() })
}

/// What a keyed request's client was first sent: `201 Created` with the resource, or the
/// refusal's problem as the problem middleware would finish it for this request.
#[derive(Debug)]
struct FirstResponse {
    instance: String,
    request_id: String,
}

impl FirstAnswer for FirstResponse {
    fn done(&self, body: String) -> Answer {
        Answer { status: StatusCode::CREATED.as_u16(), body }
    }

    fn refused(&self, refusal: &Refusal) -> Answer {
        let problem = AppError::from(refusal.clone()).to_problem().finish(&self.instance, &self.request_id);
        Answer { status: problem.status, body: serde_json::to_string(&problem).unwrap_or_default() }
    }
}

/// The fresh `201 Created`, or the stored first response replayed byte for byte. With a
/// `collection` path, a created resource's `Location` is `{collection}/{id}` either way.
pub fn respond_created<T: Serialize>(outcome: Outcome<T>, collection: Option<&str>) -> Result<HttpResponse, AppError> {
    let (status, body, replayed) = match outcome {
        Outcome::Fresh(value) => {
            let body = serde_json::to_string(&value).map_err(|e| AppError::internal("encode response", &e))?;
            (StatusCode::CREATED, body, false)
        }
        Outcome::Replay(Answer { status, body }) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body, true)
        }
    };
    let mut response = HttpResponse::build(status);
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    if status.is_success() {
        response.content_type("application/json");
        let id =
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["id"].as_str().map(str::to_owned));
        if let (Some(collection), Some(id)) = (collection, id) {
            response.insert_header((header::LOCATION, format!("{collection}/{id}")));
        }
    } else {
        response.content_type(PROBLEM_JSON);
    }
    Ok(response.body(body))
}
