//! The readiness probe's own thread and connection. Probing through the DbExecutor queue
//! would make the probe wait behind the very requests it is judging (and be shed, or time
//! out, exactly when the database is slow); this thread holds one connection outside the
//! pool and is asked by the Health actor only, one probe at a time.

use std::time::{Duration, Instant};

use actix::{Addr, Handler, Message, SyncArbiter, SyncContext};

use super::{
    failure::ActorFailure,
    pool_threads::{supervised_pool_actor, PoolThreads},
    report::ActorReport,
    supervision::{RestartReporter, Supervision},
};
use crate::{
    config::DatabaseConfig,
    db::{connection::ConnectError, ConnectionManager, DbConnection},
};

pub const ACTOR: &str = super::names::DB_PROBE;

pub struct DbProbe {
    manager: ConnectionManager,
    connection: Option<DbConnection>,
    supervision: Supervision,
    threads: PoolThreads,
}

/// The running probe thread: its address and whether it is alive.
#[derive(Clone)]
pub struct ProbeThread {
    pub addr: Addr<DbProbe>,
    threads: PoolThreads,
}

impl ProbeThread {
    pub fn report(&self) -> ActorReport {
        self.threads.report(serde_json::json!({"connection": "own, outside the pool"}))
    }
}

impl DbProbe {
    pub fn start(config: &DatabaseConfig, reporter: RestartReporter) -> ProbeThread {
        let manager = ConnectionManager::new(config);
        let threads = PoolThreads::new(ACTOR, 1);
        let counted = threads.clone();
        let addr = SyncArbiter::start(1, move || DbProbe {
            manager: manager.clone(),
            connection: None,
            supervision: reporter.supervision(ACTOR),
            threads: counted.clone(),
        });
        ProbeThread { addr, threads }
    }
}

/// Reuses the connection while it answers; otherwise connects afresh, so a database that
/// came back is seen on the next probe.
fn probe(manager: &ConnectionManager, kept: &mut Option<DbConnection>) -> Result<(), ConnectError> {
    if let Some(connection) = kept {
        if ConnectionManager::check(connection).is_ok() {
            return Ok(());
        }
        *kept = None;
    }
    let mut connection = manager.establish()?;
    ConnectionManager::check(&mut connection)?;
    *kept = Some(connection);
    Ok(())
}

supervised_pool_actor!(DbProbe);

/// One probe: how long the round trip took, or why it failed.
#[derive(Message)]
#[rtype(result = "Result<Duration, String>")]
pub struct ProbeDatabase;

impl Handler<ProbeDatabase> for DbProbe {
    type Result = Result<Duration, String>;

    fn handle(&mut self, _msg: ProbeDatabase, ctx: &mut SyncContext<Self>) -> Self::Result {
        let started = Instant::now();
        let (manager, connection) = (&self.manager, &mut self.connection);
        match self.supervision.catch::<_, _, ActorFailure>(ctx, || probe(manager, connection)) {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error.message),
            // A fresh probe (and connection) is built for this thread.
            Err(_) => Err("the probe panicked".into()),
        }
    }
}
