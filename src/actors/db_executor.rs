//! The DbExecutor pool: `DB_WORKERS` threads on a SyncArbiter, each borrowing a pooled
//! diesel connection per message. `DbGateway` is the only way in: it admits a bounded
//! number of requests, times every send out, and carries the caller's tracing span.

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Addr, Handler, MailboxError, Message, SyncArbiter, SyncContext};
use tracing::Span;

use super::{
    admission::{Admission, AdmissionSlot},
    breaker::DbBreaker,
    event_position::{EventPosition, Positioned},
    pool_threads::{supervised_pool_actor, PoolThreads},
    restarts::ActorRestarts,
    supervision::{RestartReporter, Supervision},
};
use crate::{
    db::{
        error::Unavailable,
        outbox::{Attribution, Outbox, OutboxSignals},
        DbConnection, DbError, DbPool, UseCase,
    },
    domain::cache_key::StaleEntries,
    metrics::Metrics,
};

/// Where a query stands, shared by the caller and the executor, so that a caller that
/// gives up can tell "never ran, never will" from "ran, or is running".
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// The message that carries a use case, the span of the request that asked for it, and
/// its admission slot, which is released only when the executor is done with it.
pub struct Query<U> {
    use_case: U,
    span: Span,
    /// The request that asked, recorded with the outbox events this use case appends.
    request_id: Option<Arc<str>>,
    progress: Arc<AtomicU8>,
    _slot: AdmissionSlot,
}

impl<U: UseCase> Message for Query<U> {
    type Result = Result<U::Output, DbError>;
}

pub const ACTOR: &str = super::names::DB_EXECUTOR;

pub struct DbExecutor {
    pool: DbPool,
    breaker: Arc<DbBreaker>,
    supervision: Supervision,
    threads: PoolThreads,
    /// Set off when a use case appended outbox events, so they are read at once.
    outbox_appended: OutboxSignals,
    /// Where a write drops the cache entries it made stale.
    stale_entries: Arc<dyn StaleEntries>,
    /// This replica, named in every outbox event its use cases append.
    origin: uuid::Uuid,
}

supervised_pool_actor!(DbExecutor);

impl<U: UseCase> Handler<Query<U>> for DbExecutor {
    type Result = Result<U::Output, DbError>;

    fn handle(&mut self, query: Query<U>, ctx: &mut SyncContext<Self>) -> Self::Result {
        let _entered = query.span.enter();
        if query.progress.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // The caller gave up before this started and was told nothing happened.
            return Err(DbError::Unavailable(Unavailable::Abandoned));
        }
        // Work queued before the breaker opened is refused now rather than each piece
        // waiting out a connection attempt.
        self.breaker.admit()?;
        let (pool, breaker, origin) = (&self.pool, &self.breaker, self.origin);
        let (signals, stale_entries) = (&self.outbox_appended, &self.stale_entries);
        let (use_case, request_id) = (query.use_case, query.request_id);
        let mut outbox = Outbox::attributed(Attribution { origin, request_id });
        let outcome = self.supervision.catch(ctx, || {
            let connection = pool.get();
            breaker.record_connection(connection.is_ok(), || {
                connection.as_ref().err().map(ToString::to_string).unwrap_or_default()
            });
            let mut conn = connection.map_err(|error| {
                tracing::warn!(%error, "no database connection available");
                DbError::Unavailable(Unavailable::ConnectionLost)
            })?;
            use_case.run(&mut conn, &mut outbox)
        });
        if outbox.appended() {
            // Read-your-writes: sent before the answer, so the writer's next read is queued
            // behind it. Also after an error or a panic: a COMMIT that failed may have
            // committed, a use case may panic after its COMMIT, and a dropped entry is only
            // a miss. The relay leaves this replica's events to this.
            for key in outbox.take_stale() {
                stale_entries.forget(key);
            }
            // Read at once instead of at the next poll.
            signals.appended();
        }
        outcome.and_then(|result| result)
    }
}

#[derive(Clone)]
pub struct DbGateway {
    addr: Addr<DbExecutor>,
    admission: Arc<Admission>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    threads: PoolThreads,
    /// Whether the executors back off from restarting (after panicking too often).
    restarts: Arc<ActorRestarts>,
    breaker: Arc<DbBreaker>,
    pool: DbPool,
    /// Observed before each positioned read (`read_positioned`).
    event_position: EventPosition,
}

pub struct DbGatewaySettings {
    /// This replica's id, written into the outbox events it appends.
    pub origin: uuid::Uuid,
    pub workers: usize,
    pub queue_depth: usize,
    pub timeout: Duration,
    /// Set off after each use case that appended outbox events.
    pub outbox_appended: OutboxSignals,
    /// Told of each entry a write made stale, before the writer is answered (the cache).
    pub stale_entries: Arc<dyn StaleEntries>,
    pub breaker: Arc<DbBreaker>,
    /// Where the EventRelay publishes the position reads answer.
    pub event_position: EventPosition,
}

impl DbGateway {
    pub fn start(pool: DbPool, settings: DbGatewaySettings, reporter: RestartReporter, metrics: Arc<Metrics>) -> Self {
        let threads = PoolThreads::new(ACTOR, settings.workers).exported_as(metrics.db_workers_alive.clone());
        let counted = threads.clone();
        let origin = settings.origin;
        let outbox_appended = settings.outbox_appended;
        let stale_entries = settings.stale_entries;
        let breaker = Arc::clone(&settings.breaker);
        let reported_pool = pool.clone();
        let restarts = reporter.restarts_of(ACTOR);
        // The factory runs on the executor thread itself (again after each restart).
        let addr = SyncArbiter::start(settings.workers, move || DbExecutor {
            origin,
            pool: pool.clone(),
            supervision: reporter.supervision(ACTOR),
            threads: counted.clone(),
            outbox_appended: outbox_appended.clone(),
            stale_entries: Arc::clone(&stale_entries),
            breaker: Arc::clone(&breaker),
        });
        Self {
            addr,
            admission: Arc::new(Admission::new(settings.queue_depth, Some(metrics.db_in_flight.clone()))),
            timeout: settings.timeout,
            metrics,
            threads,
            restarts,
            breaker: settings.breaker,
            pool: reported_pool,
            event_position: settings.event_position,
        }
    }

    /// The DbExecutor pool's row in the actors API, from atomics and the r2d2 pool state.
    pub fn report(&self) -> super::report::ActorReport {
        let pool = self.pool.state();
        let (in_flight, capacity) = self.queue();
        self.threads
            .report(serde_json::json!({
                "connections": pool.connections, "idle_connections": pool.idle_connections,
                "pool_size": self.pool.max_size(), "timeout_ms": self.timeout.as_millis() as u64,
                "breaker": self.breaker.state().name(),
            }))
            .with_queue(in_flight, capacity)
    }

    pub fn breaker(&self) -> &Arc<DbBreaker> {
        &self.breaker
    }

    /// Requests queued or running, and how many may be at once.
    pub fn queue(&self) -> (usize, usize) {
        (self.admission.in_flight(), self.admission.capacity())
    }

    pub fn workers(&self) -> usize {
        self.threads.configured()
    }

    /// Every admission slot is taken: a new request would be shed.
    pub fn is_saturated(&self) -> bool {
        self.admission.is_full()
    }

    /// Runs a use case on the pool, or refuses at once with 503 when the pool is saturated.
    /// A request that waited too long in the queue is withdrawn (503, safe to retry); one
    /// that had already started runs on, and its caller learns the outcome is unknown (504).
    /// A write is answered after the cache was told to drop what it changed (by the
    /// executor, right after COMMIT), so the writer's next read is queued behind that.
    pub async fn run<U: UseCase>(&self, use_case: U) -> Result<U::Output, DbError> {
        if let Err(refused) = self.breaker.admit() {
            self.metrics.db_shed.with_label_values(&["breaker_open"]).inc();
            return Err(refused);
        }
        if self.threads.alive() == 0 && self.restarts.is_down() {
            // Every executor panicked too often and sleeps out its backoff: nothing would
            // take the request before then.
            self.metrics.db_shed.with_label_values(&["backing_off"]).inc();
            return Err(DbError::Unavailable(Unavailable::WorkersRestarting {
                retry_after_secs: self.restarts.retry_after_secs(),
            }));
        }
        let progress = Arc::new(AtomicU8::new(QUEUED));
        let query = Query {
            use_case,
            span: Span::current(),
            request_id: crate::request_context::current(),
            progress: Arc::clone(&progress),
            _slot: self.admit()?,
        };
        match self.addr.send(query).timeout(self.timeout).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(error),
            Err(MailboxError::Timeout) => {
                let withdrawn =
                    progress.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok();
                let reason = if withdrawn { "timeout" } else { "overran" };
                self.metrics.db_shed.with_label_values(&[reason]).inc();
                tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, withdrawn, "database request timed out");
                Err(if withdrawn { DbError::Unavailable(Unavailable::TimedOut) } else { DbError::OutcomeUnknown })
            }
            Err(MailboxError::Closed) => Err(DbError::Internal("the DbExecutor mailbox is closed".into())),
        }
    }

    /// Runs a read and answers it with the outbox position observed before it began: every
    /// change the answer does not reflect has a larger event id (see `event_position`).
    pub async fn read_positioned<U: UseCase>(&self, read: U) -> Result<Positioned<U::Output>, DbError> {
        let position = self.event_position.observe();
        Ok(Positioned { value: self.run(read).await?, position })
    }

    fn admit(&self) -> Result<AdmissionSlot, DbError> {
        self.admission.try_admit().ok_or_else(|| {
            self.metrics.db_shed.with_label_values(&["saturated"]).inc();
            DbError::Unavailable(Unavailable::AtCapacity)
        })
    }
}

/// The cheapest round trip through a worker and a connection: the readiness probe.
pub struct Ping;

impl UseCase for Ping {
    type Output = ();
    fn run(self, conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        use diesel::r2d2::R2D2Connection;
        conn.ping().map_err(|error| {
            tracing::warn!(%error, "database ping failed");
            DbError::Unavailable(Unavailable::PingFailed)
        })
    }
}
