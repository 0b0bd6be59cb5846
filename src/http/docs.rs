//! `/docs`: the interactive API reference (Swagger UI) reading `/openapi.json`. Its files
//! are compiled into the binary, so it works offline and nothing is fetched from a CDN.

use std::sync::{Arc, OnceLock};

use actix_web::{http::header, web, web::Bytes, HttpResponse};

use crate::http::error::AppError;

/// Swagger UI runs scripts and styles of its own origin only; its icons are data: URIs and
/// React sets inline styles. It talks to this origin alone (the document and "Try it out").
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                            img-src 'self' data:; connect-src 'self'; font-src 'self'; \
                            base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        // validator_url "none": Swagger UI would otherwise ask an online validator for a badge.
        Arc::new(utoipa_swagger_ui::Config::new(["/openapi.json"]).validator_url("none").try_it_out_enabled(true))
    }))
}

/// `/` and `/docs` lead to the page; the trailing slash makes its relative asset links resolve.
pub async fn to_docs() -> HttpResponse {
    HttpResponse::Found().insert_header((header::LOCATION, "/docs/")).finish()
}

/// The interactive API reference (Swagger UI), served from the binary.
#[utoipa::path(get, path = "/docs/", tag = "operations", responses(
    (status = 200, description = "The interactive API reference", content_type = "text/html"),
))]
pub async fn docs_file(file: web::Path<String>) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::NotFound("No such file in the API reference.".into());
    let file = utoipa_swagger_ui::serve(&file, swagger_config())
        .map_err(|error| AppError::internal("API reference", &*error))?
        .ok_or_else(not_found)?;
    let body = match file.bytes {
        std::borrow::Cow::Borrowed(bytes) => Bytes::from_static(bytes),
        std::borrow::Cow::Owned(bytes) => Bytes::from(bytes),
    };
    Ok(HttpResponse::Ok()
        .content_type(file.content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}
