//! `GET /api/v1/ws`: live updates over a WebSocket. Everything that can be refused is
//! refused here, before the upgrade, as an ordinary problem: a foreign browser origin
//! (403), a bad token (401), too many connections (503 in total, 429 for one user).

pub mod session;

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::{
    actors::event_hub::{Attach, AttachRefused, Detach},
    config::Config,
    domain::live::{TopicSet, Viewer},
    error::AppError,
    http::auth_header::bearer_token,
    state::AppState,
};

const HUB_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a live-updates connection. See the README ("Live updates") for the protocol.
#[utoipa::path(get, path = "/api/v1/ws", tag = "live updates",
    params(("access_token" = Option<String>, Query,
        description = "The bearer token, for clients that cannot set headers (browsers); without any token only public topics are open")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", content_type = "application/problem+json"),
        (status = 401, description = "The token is invalid or expired", content_type = "application/problem+json"),
        (status = 403, description = "A browser Origin that is neither this service nor in CORS_ALLOWED_ORIGINS", content_type = "application/problem+json"),
        (status = 429, description = "This user holds WS_MAX_CONNECTIONS_PER_USER connections already", content_type = "application/problem+json"),
        (status = 503, description = "WS_MAX_CONNECTIONS reached", content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])))]
pub async fn connect(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, AppError> {
    check_origin(&request, &state.config)?;
    let (viewer, token_expires_at) = match bearer_token(&request).map(str::to_owned).or_else(|| query_token(&request)) {
        None => (Viewer::Anonymous, None),
        Some(token) => {
            let claims = state.tokens.verify_claims(&token)?;
            let unauthorized = || AppError::Unauthorized("The access token is missing, invalid or expired.".into());
            let user = state.cache.user(claims.user_id).await?.ok_or_else(unauthorized)?;
            // A password or role change since the token was issued voids it, here as over HTTP.
            if user.token_generation != claims.generation {
                return Err(unauthorized());
            }
            (Viewer::User { id: user.id, role: user.role }, Some(claims.expires_at))
        }
    };
    let attached = state
        .hub
        .send(Attach { viewer, topics: TopicSet::default(), rejoining: false })
        .timeout(HUB_TIMEOUT)
        .await
        .map_err(|_| AppError::unavailable("Live updates are restarting; try again shortly."))?
        .map_err(|refused| match refused {
            AttachRefused::TooManyConnections => {
                AppError::unavailable("This replica holds as many live connections as it may; try another or later.")
            }
            AttachRefused::TooManyForUser => AppError::TooManyRequests {
                retry_after_secs: 5,
                detail: "You hold as many live connections as one user may; close one first.".into(),
            },
        })?;
    let (response, ws, stream) = actix_ws::handle(&request, body).map_err(|_| {
        state.hub.do_send(Detach(attached.id));
        AppError::BadRequest("This route speaks WebSocket only: send an Upgrade: websocket handshake.".into())
    })?;
    let setup = session::SessionSetup {
        hub: state.hub.clone(),
        db: state.db.clone(),
        metrics: state.metrics.clone(),
        viewer,
        token_expires_at,
        attached,
        ping_interval: state.config.live_updates.ping_interval,
        shutdown: state.shutdown.clone(),
    };
    actix_web::rt::spawn(session::run(ws, stream, setup));
    Ok(response)
}

/// `?access_token=`; never logged (request spans record the path only).
fn query_token(request: &HttpRequest) -> Option<String> {
    url::form_urlencoded::parse(request.query_string().as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
        .filter(|token| !token.is_empty())
}

/// A browser sends `Origin`; it must be this service's own origin (same scheme, host and
/// port as the request) or one of `CORS_ALLOWED_ORIGINS`, so a foreign page cannot open a
/// connection riding the user's token. Clients that send no `Origin` are not browsers.
fn check_origin(request: &HttpRequest, config: &Config) -> Result<(), AppError> {
    let Some(origin) = request.headers().get(actix_web::http::header::ORIGIN) else { return Ok(()) };
    let refused = || AppError::Forbidden("This Origin may not open live-updates connections.".into());
    let origin = origin.to_str().ok().and_then(|raw| url::Url::parse(raw).ok()).ok_or_else(refused)?;
    let info = request.connection_info();
    let own = url::Url::parse(&format!("{}://{}", info.scheme(), info.host())).ok();
    let same = |other: &url::Url| {
        other.scheme() == origin.scheme()
            && other.host_str() == origin.host_str()
            && other.port_or_known_default() == origin.port_or_known_default()
    };
    let is_own = own.as_ref().is_some_and(same);
    let is_allowed = config
        .cors_allowed_origins
        .iter()
        .filter_map(|allowed| url::Url::parse(allowed).ok())
        .any(|allowed| same(&allowed));
    if is_own || is_allowed {
        Ok(())
    } else {
        Err(refused())
    }
}
