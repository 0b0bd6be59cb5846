//! While the service drains before shutdown, every response asks the client to close its
//! keep-alive connection (`Connection: close`), so that the next request goes to another
//! replica instead of being cut off when the listener closes.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::ConnectionType,
    middleware::Next,
    web, Error,
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

pub async fn close_connections_while_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let draining = req.app_data::<web::Data<Draining>>().is_some_and(|flag| flag.is_draining());
    let mut response = next.call(req).await?;
    if draining {
        response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}
