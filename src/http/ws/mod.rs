//! `GET /api/v1/ws`: live updates over a WebSocket. Everything that can be refused is
//! refused here, before the upgrade, as an ordinary problem: not a handshake (400), a
//! foreign browser origin (403), a bad token (401), too many connections (503 in total,
//! 429 for one user or one address). A granted handshake leaves its `Grant` in the 101 for
//! the upgrade service, which then serves the connection over the raw socket.

pub mod session;
pub mod socket;
pub mod upgrade;

use std::time::Duration;

use actix_web::{
    http::{header, StatusCode},
    web, HttpMessage, HttpRequest, HttpResponse,
};

use crate::{
    actors::event_hub::{self, Attach, AttachRefused},
    config::Config,
    domain::live::Viewer,
    http::error::AppError,
    http::{auth_header::bearer_token, middleware::rate_limit::client_ip},
    metrics::refusal_reason,
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
        (status = 429, description = "This user holds WS_MAX_CONNECTIONS_PER_USER connections already, or this address WS_MAX_ANONYMOUS_PER_ADDRESS without a token", content_type = "application/problem+json"),
        (status = 503, description = "This replica holds as many live connections as it may (WS_MAX_CONNECTIONS, or fewer when the open-file limit is lower)", content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])))]
pub async fn connect(state: web::Data<AppState>, request: HttpRequest) -> Result<HttpResponse, AppError> {
    let not_a_handshake =
        || AppError::BadRequest("This route speaks WebSocket only: send an Upgrade: websocket handshake.".into());
    if request.extensions().get::<upgrade::Upgradable>().is_none() {
        return Err(not_a_handshake());
    }
    actix_http::ws::verify_handshake(request.head()).map_err(|_| not_a_handshake())?;
    let key = request.headers().get(header::SEC_WEBSOCKET_KEY).ok_or_else(not_a_handshake)?;
    let accept = actix_http::ws::hash_key(key.as_bytes());
    check_origin(&request, &state.config)?;
    let address = client_ip(&request, &state.config.server.trusted_proxies).map(address_key);
    let (viewer, generation, token_expires_at) =
        match bearer_token(&request).map(str::to_owned).or_else(|| query_token(&request)) {
            None => (Viewer::Anonymous, None, None),
            Some(token) => {
                let claims = state.tokens.verify_claims(&token)?;
                let unauthorized = || AppError::Unauthorized("The access token is missing, invalid or expired.".into());
                let user = state.cache.user(claims.user_id).await?.ok_or_else(unauthorized)?;
                // A password or role change since the token was issued voids it, here as over HTTP.
                if user.token_generation != claims.generation {
                    return Err(unauthorized());
                }
                (Viewer::User { id: user.id, role: user.role }, Some(claims.generation), Some(claims.expires_at))
            }
        };
    let hub_down = state.actors.restarts().find(event_hub::ACTOR).is_some_and(|restarts| restarts.is_down());
    if hub_down {
        return Err(AppError::unavailable("Live updates are restarting; try again shortly."));
    }
    let attach = Attach { viewer, generation, address };
    let attached = state
        .hub
        .send(attach)
        .timeout(HUB_TIMEOUT)
        .await
        .map_err(|_| AppError::unavailable("Live updates are restarting; try again shortly."))?
        .map_err(|refused| refusal(&state, refused))?;
    let setup = session::SessionSetup {
        open: session::OpenConnection::new(&state.metrics),
        db: state.db.clone(),
        metrics: state.metrics.clone(),
        viewer,
        generation,
        token_expires_at,
        attached,
        ping_interval: state.config.live_updates.ping_interval,
    };
    let mut response = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header((
            header::SEC_WEBSOCKET_ACCEPT,
            header::HeaderValue::from_bytes(&accept).map_err(|_| not_a_handshake())?,
        ))
        .finish();
    response.extensions_mut().insert(upgrade::Grant(setup));
    Ok(response)
}

/// The address anonymous connections are counted by: an IPv6 client's /64 (one host
/// usually holds a whole /64), an IPv4 one as it is.
fn address_key(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A refused attach as the problem the client gets, counted by the limit that refused it.
fn refusal(state: &AppState, refused: AttachRefused) -> AppError {
    let (reason, error) = match refused {
        AttachRefused::TooManyConnections | AttachRefused::ShuttingDown => (
            refusal_reason::TOTAL,
            AppError::unavailable("This replica holds as many live connections as it may; try another or later."),
        ),
        AttachRefused::OutOfDescriptors => (
            refusal_reason::DESCRIPTORS,
            AppError::unavailable("This replica holds as many live connections as it may; try another or later."),
        ),
        AttachRefused::TooManyForUser => (
            refusal_reason::PER_USER,
            AppError::TooManyRequests {
                retry_after_secs: 5,
                detail: "You hold as many live connections as one user may; close one first.".into(),
            },
        ),
        AttachRefused::TooManyForAddress => (
            refusal_reason::PER_ADDRESS,
            AppError::TooManyRequests {
                retry_after_secs: 5,
                detail: "This address holds as many live connections without a token as it may; close one or sign in."
                    .into(),
            },
        ),
    };
    state.metrics.ws_refused.with_label_values(&[reason]).inc();
    error
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
    let Some(origin) = request.headers().get(header::ORIGIN) else { return Ok(()) };
    let refused = || AppError::Forbidden("This Origin may not open live-updates connections.".into());
    let origin = origin.to_str().ok().and_then(|raw| url::Url::parse(raw).ok()).ok_or_else(refused)?;
    let same = |other: &url::Url| {
        other.scheme() == origin.scheme()
            && other.host_str() == origin.host_str()
            && other.port_or_known_default() == origin.port_or_known_default()
    };
    let is_own = own_origin(request, &config.server.trusted_proxies).as_ref().is_some_and(same);
    let is_allowed = config
        .server
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

/// This service's origin as the client addressed it: from `Forwarded` / `X-Forwarded-*`
/// when a trusted proxy sent the request, else from the request's own `Host` (anyone can
/// write forwarding headers; only our proxies' are believed).
fn own_origin(request: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<url::Url> {
    let from_proxy = request.peer_addr().is_some_and(|peer| trusted.iter().any(|net| net.contains(&peer.ip())));
    let origin = if from_proxy {
        let info = request.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    } else {
        let scheme = if request.app_config().secure() { "https" } else { "http" };
        let host = request.headers().get(header::HOST).and_then(|host| host.to_str().ok())?;
        format!("{scheme}://{host}")
    };
    url::Url::parse(&origin).ok()
}
