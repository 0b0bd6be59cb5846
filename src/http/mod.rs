//! The HTTP face of the service: routes, middleware and one handler module per resource.

pub mod auth;
pub mod auth_header;
pub mod chaos;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod users;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::{config::Config, error::AppError};

/// Registers every route. Each path is one `resource` so that a wrong method gets 405
/// with an `Allow` header instead of 404.
pub fn routes(cfg: &mut web::ServiceConfig, config: &Config) {
    cfg.service(web::resource("/livez").route(web::get().to(ops::livez)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        .service(web::resource("/openapi.json").route(web::get().to(ops::openapi_document)))
        .service(
            web::scope("/api/v1")
                .service(web::resource("/auth/register").route(web::post().to(auth::register)))
                .service(web::resource("/auth/login").route(web::post().to(auth::login)))
                .service(web::resource("/users/me").route(web::get().to(users::me)))
                .service(web::resource("/users").route(web::get().to(users::list)))
                .service(
                    web::resource("/users/{id}")
                        .route(web::get().to(users::get))
                        .route(web::patch().to(users::update))
                        .route(web::delete().to(users::delete)),
                ),
        );
    // Fault injection exists only when an operator asked for it with CHAOS_TOKEN.
    if config.chaos_token.is_some() {
        cfg.service(web::resource("/ops/chaos").route(web::post().to(chaos::inject_fault)));
    }
}

pub async fn unknown_route(request: HttpRequest) -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound(format!("No resource exists at {}.", request.path())))
}
