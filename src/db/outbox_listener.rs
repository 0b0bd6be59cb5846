//! `LISTEN` for the outbox's `NOTIFY` on PostgreSQL, so every replica reads another
//! replica's events as soon as they commit instead of at its next poll.
//!
//! This is the one connection that is not diesel's: waiting for a notification means
//! waiting on the socket, which diesel (`notifications_iter` only drains what already
//! arrived) cannot do without polling. It runs no statement but `LISTEN`, and polling the
//! outbox stays the fallback whenever this connection is down.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::outbox::NOTIFY_CHANNEL;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Wakes `wake` on every outbox notification, reconnecting with backoff for as long as the
/// future is polled. Meant to be spawned on the relay's arbiter and dropped with it.
pub async fn wake_on_notify(database_url: String, wake: Arc<Notify>) {
    let mut retry = FIRST_RETRY;
    loop {
        match listen(&database_url, &wake).await {
            Ok(()) => retry = FIRST_RETRY,
            Err(error) => {
                tracing::warn!(%error, retry_ms = retry.as_millis() as u64, "outbox LISTEN connection failed; polling until it is back")
            }
        }
        actix_rt::time::sleep(retry).await;
        retry = (retry * 2).min(LAST_RETRY);
    }
}

/// One connection's life: returns when the connection ends. The connection is driven in
/// this same future, so dropping it (the relay restarting) closes the connection too.
async fn listen(database_url: &str, wake: &Notify) -> Result<(), tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = database_url.parse()?;
    config.connect_timeout(Duration::from_secs(5)).application_name("storefront-outbox-listener");
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {NOTIFY_CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    // The connection must be polled for LISTEN to complete.
    loop {
        tokio::select! {
            done = &mut listening => {
                done?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
    tracing::debug!("listening for outbox notifications");
    // Anything committed while this connection was down is read now, not at the next poll.
    wake.notify_one();
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
            Ok(_) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
