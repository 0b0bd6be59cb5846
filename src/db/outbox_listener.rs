//! The outbox's `LISTEN` / `NOTIFY` on PostgreSQL, so every replica reads another
//! replica's events as soon as they commit instead of at its next poll.
//!
//! The `NOTIFY` is sent here, after the commits it announces, not by the writing
//! transactions: a transaction that notifies takes the cluster-wide notification lock at
//! COMMIT and holds it through its WAL flush, so appending commits would take turns again.
//! Sent from here, at most one every `ANNOUNCE_SPACING`, one `NOTIFY` covers every commit
//! made since the previous one. A replica that dies between a commit and its announcement leaves the others
//! to their next poll.
//!
//! This is the one connection that is not diesel's: waiting for a notification means
//! waiting on the socket, which diesel (`notifications_iter` only drains what already
//! arrived) cannot do without polling. It runs no statement but `LISTEN` and `NOTIFY`,
//! and polling the outbox stays the fallback whenever this connection is down.

use std::time::Duration;

use futures_util::{future::OptionFuture, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

use super::outbox::{OutboxSignals, NOTIFY_CHANNEL};

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// The least time between two announcements: under load one covers that time's commits.
const ANNOUNCE_SPACING: Duration = Duration::from_millis(10);

/// Wakes `signals.relay` on every outbox notification and sends one whenever
/// `signals.announce` is set off, reconnecting with backoff for as long as the future is
/// polled. Meant to be spawned on the relay's arbiter and dropped with it.
pub async fn listen_and_announce(database_url: String, signals: OutboxSignals) {
    let mut retry = FIRST_RETRY;
    loop {
        match listen(&database_url, &signals).await {
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
async fn listen(database_url: &str, signals: &OutboxSignals) -> Result<(), tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = database_url.parse()?;
    config.connect_timeout(Duration::from_secs(5)).application_name("storefront-outbox-listener");
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {NOTIFY_CHANNEL}");
    // This session hears its own announcements too; its backend's pid tells them apart.
    let listening = async {
        client.batch_execute(&statement).await?;
        client.query_one("SELECT pg_backend_pid()", &[]).await.map(|row| row.get::<_, i32>(0))
    };
    tokio::pin!(listening);
    // The connection must be polled for LISTEN to complete.
    let own_pid = loop {
        tokio::select! {
            done = &mut listening => break done?,
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    };
    tracing::debug!("listening for outbox notifications");
    // Anything committed while this connection was down is read now, not at the next poll,
    // here and (announced) by the others.
    signals.relay.notify_one();
    signals.announce.notify_one();
    let notify = format!("NOTIFY {NOTIFY_CHANNEL}");
    let mut announcing = None;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(note))) if note.process_id() != own_pid => signals.relay.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
            () = signals.announce.notified(), if announcing.is_none() => {
                let (client, notify) = (&client, &notify);
                announcing = Some(Box::pin(async move {
                    let sent = client.batch_execute(notify).await;
                    actix_rt::time::sleep(ANNOUNCE_SPACING).await;
                    sent
                }));
            }
            Some(sent) = OptionFuture::from(announcing.as_mut()), if announcing.is_some() => {
                announcing = None;
                sent?;
            }
        }
    }
}
