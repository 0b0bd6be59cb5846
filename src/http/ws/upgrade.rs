//! How a live-updates connection leaves actix-http's HTTP/1 dispatcher. actix-http hands
//! every request that asks for `Upgrade: websocket` (and CONNECT) to an upgrade service,
//! together with the connection itself. This one asks the application, through the usual
//! routes and middleware, what to answer: the `/api/v1/ws` handler decides every refusal
//! there (token, Origin, limits, rate limits) and grants an upgrade by leaving a `Grant` in
//! its 101 response. A granted connection is then served by its session, a task of its
//! own, over the raw socket: the dispatcher, its two 8 KiB buffers and its task are gone.
//! Any other answer is written out and the connection closed.

use std::{cell::OnceCell, future::poll_fn, io, pin::Pin, rc::Rc, time::Duration};

use actix_codec::Framed;
use actix_http::{
    body::{BodySize, BoxBody},
    h1, ConnectionType, HttpMessage, Request, Response,
};
use actix_service::{Service, ServiceFactory};
use futures_util::future::{ready, LocalBoxFuture, Ready};
use prometheus::IntGauge;
use tokio::net::TcpStream;

use super::{
    session::{self, SessionSetup},
    socket::WsSocket,
};
use crate::{
    metrics::disconnect_reason,
    websocket::{self, close_code, MAX_PENDING_BYTES},
};

/// Marks a request that arrived through the upgrade service: only such a request can be
/// granted a WebSocket (any other path has no connection to hand over).
#[derive(Debug, Clone, Copy)]
pub struct Upgradable;

/// What the handler leaves in a 101 response: everything the connection needs. Dropped
/// unused (the 101 could not be written), its membership gives the hub its place back.
pub struct Grant(pub SessionSetup);

/// The kernel send buffer of a live-updates socket (Linux doubles it for its bookkeeping).
pub const SOCKET_SEND_BUFFER: usize = 64 * 1024;
/// How long writing a handshake answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer written on an upgrade path (problems, or the few documents a
/// request carrying `Upgrade: websocket` could ask for).
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// Each HTTP worker's application service, shared between the HTTP/1 dispatcher and the
/// upgrade service of that worker (both are built per worker; this keeps them one).
pub type AppSlot<S> = Rc<OnceCell<Rc<S>>>;

/// Builds the application's service once per worker and keeps it in the worker's slot.
pub struct SharedApp<F: ServiceFactory<Request>> {
    app: F,
    slot: AppSlot<F::Service>,
}

impl<F: ServiceFactory<Request>> SharedApp<F> {
    pub fn new(app: F, slot: AppSlot<F::Service>) -> Self {
        Self { app, slot }
    }
}

impl<F> ServiceFactory<Request> for SharedApp<F>
where
    F: ServiceFactory<Request, Config = ()>,
    F::Service: 'static,
    F::Future: 'static,
{
    type Response = F::Response;
    type Error = F::Error;
    type Config = ();
    type Service = SharedAppService<F::Service>;
    type InitError = F::InitError;
    type Future = LocalBoxFuture<'static, Result<Self::Service, Self::InitError>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let (building, slot) = (self.app.new_service(()), Rc::clone(&self.slot));
        Box::pin(async move {
            let service = Rc::new(building.await?);
            // Built once per worker, so the slot is empty.
            let _ = slot.set(Rc::clone(&service));
            Ok(SharedAppService(service))
        })
    }
}

pub struct SharedAppService<S>(Rc<S>);

impl<S: Service<Request>> Service<Request> for SharedAppService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&self, request: Request) -> Self::Future {
        self.0.call(request)
    }
}

/// The upgrade service's factory: one per worker, reading that worker's application slot.
pub struct LiveUpgrade<S> {
    app: AppSlot<S>,
    buffered: IntGauge,
}

impl<S> LiveUpgrade<S> {
    pub fn new(app: AppSlot<S>, buffered: IntGauge) -> Self {
        Self { app, buffered }
    }
}

type Connection = (Request, Framed<TcpStream, h1::Codec>);

impl<S> ServiceFactory<Connection> for LiveUpgrade<S>
where
    S: Service<Request> + 'static,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    type Response = ();
    type Error = actix_web::Error;
    type Config = ();
    type Service = LiveUpgradeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Service, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        ready(Ok(LiveUpgradeService { app: Rc::clone(&self.app), buffered: self.buffered.clone() }))
    }
}

pub struct LiveUpgradeService<S> {
    app: AppSlot<S>,
    buffered: IntGauge,
}

impl<S> Service<Connection> for LiveUpgradeService<S>
where
    S: Service<Request> + 'static,
    S::Response: Into<Response<BoxBody>>,
    S::Error: Into<Response<BoxBody>>,
{
    type Response = ();
    type Error = actix_web::Error;
    // Boxed: the dispatcher keeps this future inline, so an unboxed session would make
    // every HTTP connection as large as a live one.
    type Future = LocalBoxFuture<'static, Result<(), actix_web::Error>>;

    actix_service::always_ready!();

    fn call(&self, (request, framed): Connection) -> Self::Future {
        let app = self.app.get().cloned();
        let buffered = self.buffered.clone();
        Box::pin(async move {
            // The dispatcher builds the application before it serves a connection.
            let Some(app) = app else { return Err(io::Error::other("the application is not built yet").into()) };
            // RFC 6455 §4.1: a handshake is an HTTP/1.1 GET (a HEAD is routed as a GET
            // further in, so it is told apart here).
            if request.method() == actix_http::Method::GET && request.version() == actix_http::Version::HTTP_11 {
                request.extensions_mut().insert(Upgradable);
            }
            // Boxed: held only for the handshake, not for the connection's whole life.
            let mut response: Response<BoxBody> = match Box::pin(app.call(request)).await {
                Ok(response) => response.into(),
                Err(error) => error.into(),
            };
            let grant = response.extensions_mut().remove::<Grant>();
            let served = match grant {
                Some(Grant(setup)) if response.status().as_u16() == 101 => {
                    serve(framed, response, setup, buffered).await
                }
                _ => answer_and_close(framed, response).await,
            };
            // A client that went away mid-answer is no server error.
            if let Err(error) = served {
                tracing::debug!(%error, "an upgrade request's connection ended early");
            }
            Ok(())
        })
    }
}

/// Writes the 101 and hands the raw socket to the session.
async fn serve(
    mut framed: Framed<TcpStream, h1::Codec>,
    response: Response<BoxBody>,
    setup: SessionSetup,
    buffered: IntGauge,
) -> io::Result<()> {
    // Unanswered, the setup (and with it the hub's place) is dropped here.
    tokio::time::timeout(ANSWER_TIMEOUT, write_head(&mut framed, response, None))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
    // The dispatcher's buffers (8 KiB each) go here; only the socket and whatever the
    // client sent after its handshake (a subscribe, say) stay with the connection.
    let (mut socket, early_too_long) = {
        let parts = framed.into_parts();
        // RFC 6455 §4.1: a client waits for the answer before it sends; a little early data
        // (one frame) is taken, more is refused rather than held.
        let too_long = parts.read_buf.len() > MAX_PENDING_BYTES;
        let early: &[u8] = if too_long { &[] } else { &parts.read_buf };
        (WsSocket::new(parts.io, early, buffered), too_long)
    };
    let io = socket.tcp();
    io.set_nodelay(true)?;
    // The kernel's share of a connection that stops reading is bounded too (left alone,
    // Linux grows a send buffer to 4 MiB).
    socket2::SockRef::from(io).set_send_buffer_size(SOCKET_SEND_BUFFER)?;
    if early_too_long {
        setup.metrics.ws_disconnects.with_label_values(&[disconnect_reason::FRAME_TOO_BIG]).inc();
        drop(setup);
        socket.send(websocket::close(close_code::TOO_BIG, "sent too much before the handshake was answered"));
        socket.finish(tokio::time::Instant::now() + ANSWER_TIMEOUT).await;
        return Ok(());
    }
    // A task of its own: the dispatcher's task (and all it holds for HTTP) then ends.
    actix_rt::spawn(session::run(socket, setup));
    Ok(())
}

/// Writes a refusal (or any other answer) and closes: the connection cannot go back to
/// the HTTP/1 dispatcher.
async fn answer_and_close(mut framed: Framed<TcpStream, h1::Codec>, response: Response<BoxBody>) -> io::Result<()> {
    let (mut head, body) = response.into_parts();
    head.head_mut().set_connection_type(ConnectionType::Close);
    let body = match actix_http::body::to_bytes_limited(body, ANSWER_LIMIT).await {
        Ok(Ok(body)) => body,
        _ => return Err(io::Error::other("the answer to an upgrade request could not be read")),
    };
    let written = tokio::time::timeout(ANSWER_TIMEOUT, write_head(&mut framed, head, Some(body))).await;
    written.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

async fn write_head<B>(
    framed: &mut Framed<TcpStream, h1::Codec>,
    response: Response<B>,
    body: Option<actix_web::web::Bytes>,
) -> io::Result<()> {
    let (head, _) = response.into_parts();
    let size = body.as_ref().map_or(BodySize::None, |body| BodySize::Sized(body.len() as u64));
    let mut framed = Pin::new(framed);
    framed.as_mut().write(h1::Message::Item((head, size)))?;
    if let Some(body) = body.filter(|body| !body.is_empty()) {
        framed.as_mut().write(h1::Message::Chunk(Some(body)))?;
    }
    framed.as_mut().write(h1::Message::<(Response<()>, BodySize)>::Chunk(None))?;
    poll_fn(|cx| framed.as_mut().flush::<h1::Message<(Response<()>, BodySize)>>(cx)).await
}
