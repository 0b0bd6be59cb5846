//! The id of the request being served, for code that runs on its behalf without being
//! handed it: the DbGateway reads it here and carries it to the DbExecutor thread, where
//! the outbox records it with the events the request caused; an idempotent write stores it
//! with its first response.

use std::{future::Future, sync::Arc};

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// Runs `work` (a request's whole handling) with `id` as its request id.
pub async fn scope<F: Future>(id: Arc<str>, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request this task is serving, if it is serving one.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}
