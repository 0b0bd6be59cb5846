//! The HTTP face of the service: routes, middleware and one handler module per resource.

pub mod accounts;
pub mod auth;
pub mod auth_header;
pub mod auth_user;
pub mod chaos;
pub mod dashboard;

pub mod docs;
pub mod error;
pub mod event_position;
pub mod extract;
pub mod idempotency;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod ops_api;
pub mod orders;
pub mod paging;
pub mod problems;
pub mod products;
pub mod schema_rules;
pub mod users;
pub mod ws;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::{config::Config, http::error::AppError};

/// Registers every route. Each path is one `resource` so that a wrong method gets 405
/// with an `Allow` header instead of 404.
///
/// Order is speed, not meaning (no two patterns overlap, except `/users/me`, which must
/// come before `/users/{id}`): actix tries each pattern in turn, and each one with a
/// `{segment}` is a regex search with an allocation, tried even when it cannot match. So
/// the API scope comes before the one dynamic top-level pattern (`/docs/{file}`), and the
/// catalog, the busiest reads, comes first within it.
pub fn routes(cfg: &mut web::ServiceConfig, config: &Config) {
    cfg.service(web::resource("/livez").route(web::get().to(ops::livez)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        .service(
            web::scope("/api/v1")
                .service(
                    web::resource("/products")
                        .route(web::get().to(products::list))
                        .route(web::post().to(products::create)),
                )
                .service(
                    web::resource("/products/{id}")
                        .route(web::get().to(products::get))
                        .route(web::patch().to(products::update))
                        .route(web::delete().to(products::delete)),
                )
                .service(web::resource("/auth/register").route(web::post().to(auth::register)))
                .service(web::resource("/auth/login").route(web::post().to(auth::login)))
                .service(web::resource("/ops/actors").route(web::get().to(ops_api::actors)))
                .service(web::resource("/ops/restarts").route(web::get().to(ops_api::restarts)))
                .service(web::resource("/ops/metrics").route(web::get().to(ops_api::metrics_summary)))
                .service(web::resource("/users/me").route(web::get().to(users::me)))
                .service(web::resource("/users").route(web::get().to(users::list)))
                .service(
                    web::resource("/users/{id}")
                        .route(web::get().to(users::get))
                        .route(web::patch().to(users::update))
                        .route(web::delete().to(users::delete)),
                )
                .service(web::resource("/users/{id}/orders").route(web::get().to(orders::list_for_user)))
                .service(web::resource("/account").route(web::get().to(accounts::mine)))
                .service(web::resource("/accounts/{user_id}/deposits").route(web::post().to(accounts::deposit)))
                .service(
                    web::resource("/transfers")
                        .route(web::get().to(accounts::list_transfers))
                        .route(web::post().to(accounts::transfer)),
                )
                .service(
                    web::resource("/orders").route(web::get().to(orders::list)).route(web::post().to(orders::place)),
                )
                .service(web::resource("/orders/{id}").route(web::get().to(orders::get)))
                .service(web::resource("/orders/{id}/cancel").route(web::post().to(orders::cancel)))
                .service(web::resource("/ws").route(web::get().to(ws::connect))),
        )
        .service(web::resource("/openapi.json").route(web::get().to(openapi::openapi_document)))
        .service(web::resource("/ops").route(web::get().to(dashboard::to_page)))
        .service(web::resource("/ops/").route(web::get().to(dashboard::page)))
        .service(web::resource("/ops/app.js").route(web::get().to(dashboard::script)))
        .service(web::resource("/ops/app.css").route(web::get().to(dashboard::style)))
        .service(web::resource(["/", "/docs"]).route(web::get().to(docs::to_docs)))
        .service(web::resource("/docs/{file:.*}").route(web::get().to(docs::docs_file)));
    // Fault injection exists only when an operator asked for it with CHAOS_TOKEN.
    if config.ops.chaos_token.is_some() {
        cfg.service(web::resource("/ops/chaos").route(web::post().to(chaos::inject_fault)));
    }
}

pub async fn unknown_route(request: HttpRequest) -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound(format!("No resource exists at {}.", request.path())))
}
