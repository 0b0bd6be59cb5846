//! `GET /ops/`: the live ops dashboard, a single page shipped inside the binary (no CDN,
//! no build step: plain HTML, CSS and JavaScript in `assets/ops/`). Its scripts come from
//! this origin only, under a strict Content-Security-Policy; it signs an admin in with
//! the ordinary login route and reads the admin-only `/api/v1/ops/*` routes.

use actix_web::{http::header, HttpResponse};

const INDEX: &str = include_str!("../../assets/ops/index.html");
const SCRIPT: &str = include_str!("../../assets/ops/app.js");
const STYLE: &str = include_str!("../../assets/ops/app.css");

/// Scripts and styles from this origin only, no inline code, nothing framed, fetches and
/// the WebSocket to this origin only.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_POLICY))
        // Small, and must change with the binary: revalidate every time.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The ops dashboard page.
#[utoipa::path(get, path = "/ops/", tag = "operations", responses(
    (status = 200, description = "The live ops dashboard (HTML); an admin signs in on it", content_type = "text/html"),
))]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `/ops` without the slash: the page's relative links need the directory form.
pub async fn to_page() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/ops/")).finish()
}
