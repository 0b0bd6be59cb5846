//! When a response withdraws keep-alive (`Connection: close`): while the service drains
//! before shutdown, so that the next request goes to another replica instead of being cut
//! off when the listener closes; and while the replica is crowded — three quarters of the
//! HTTP connections it accepts are open — so that no client can hold, idle between
//! requests, the slots that health checks and sign-ins need.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use actix_web::{
    dev::{ServiceRequest, ServiceResponse},
    http::ConnectionType,
    web,
};

/// Set once when shutdown begins; never cleared.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Read when the request arrives: a request that came in before the drain keeps its connection.
pub fn is_draining(req: &ServiceRequest) -> bool {
    req.app_data::<web::Data<Draining>>().is_some_and(|flag| flag.is_draining())
}

/// Open HTTP connections, counted as they are accepted and closed (a live-updates
/// connection leaves the count at its upgrade), against the cap the server accepts.
#[derive(Debug, Clone)]
pub struct OpenConnections {
    open: Arc<AtomicUsize>,
    crowded_at: usize,
    gauge: prometheus::IntGauge,
}

impl OpenConnections {
    pub fn new(cap: usize, gauge: prometheus::IntGauge) -> Self {
        Self { open: Arc::default(), crowded_at: (cap * 3 / 4).max(1), gauge }
    }

    /// Counts one connection for as long as the returned guard lives.
    pub fn opened(&self) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.gauge.inc();
        OpenConnection(self.clone())
    }

    pub fn is_crowded(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.crowded_at
    }
}

/// One open connection (kept in the connection's data, dropped with it).
#[derive(Debug)]
pub struct OpenConnection(OpenConnections);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

/// Whether the answer to this request should withdraw keep-alive.
pub fn closes_after(req: &ServiceRequest) -> bool {
    is_draining(req) || req.app_data::<web::Data<OpenConnections>>().is_some_and(|open| open.is_crowded())
}

pub fn close_connection<B>(response: &mut ServiceResponse<B>) {
    // A WebSocket's 101 keeps its connection: it is no longer HTTP's to close.
    if response.status() != actix_web::http::StatusCode::SWITCHING_PROTOCOLS {
        response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    }
}
