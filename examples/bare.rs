//! Benchmark baseline, the "HTTP ceiling" for `bench/run.sh`: a bare actix-web server whose
//! `GET /bare` returns a fixed JSON body shaped and sized like a product.
//!
//! No middleware, no logging, no database, actix-web defaults (one worker per core). Usage:
//! `bare [HOST:PORT]`, default `127.0.0.1:18090`.

use actix_web::{http::header::ContentType, web, App, HttpResponse, HttpServer};

const DEFAULT_ADDR: &str = "127.0.0.1:18090";

/// Shaped and sized like a serialised product (about 250 bytes).
const BODY: &str = concat!(
    r#"{"id":"0192f0c4-7b1e-7c3a-9d2f-5a6b7c8d9e0f","name":"Bench widget","#,
    r#""description":"A product for benchmarking","price_cents":1999,"stock":100,"status":"active","#,
    r#""created_at":"2025-01-01T00:00:00.000000Z","updated_at":"2025-01-01T00:00:00.000000Z"}"#,
);

async fn bare() -> HttpResponse {
    HttpResponse::Ok().content_type(ContentType::json()).body(BODY)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    HttpServer::new(|| App::new().route("/bare", web::get().to(bare))).bind(addr.as_str())?.run().await
}
