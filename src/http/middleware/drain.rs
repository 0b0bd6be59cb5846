//! While the service drains before shutdown, every response asks the client to close its
//! keep-alive connection (`Connection: close`), so that the next request goes to another
//! replica instead of being cut off when the listener closes.

use std::sync::{
    atomic::{AtomicBool, Ordering},
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

pub fn close_connection<B>(response: &mut ServiceResponse<B>) {
    response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
}
