//! The readiness probe's own thread and connection. Probing through the DbExecutor queue
//! would make the probe wait behind the very requests it is judging (and be shed, or time
//! out, exactly when the database is slow); this thread holds one connection outside the
//! pool and is asked by the Health actor only, one probe at a time.

use std::time::{Duration, Instant};

use actix::{ActorContext, Addr, Handler, Message, SyncArbiter, SyncContext};

use super::{
    pool_threads::{counted_sync_actor, PoolThreads},
    report::ActorReport,
    supervision::{catch_panic, RestartReporter},
};
use crate::{
    config::DatabaseConfig,
    db::{connection::ConnectError, ConnectionManager, DbConnection},
};

pub const ACTOR: &str = "db_probe";

pub struct DbProbe {
    manager: ConnectionManager,
    connection: Option<DbConnection>,
    reporter: RestartReporter,
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
            reporter: reporter.clone(),
            threads: counted.clone(),
        });
        ProbeThread { addr, threads }
    }

    /// Reuses the connection while it answers; otherwise connects afresh, so a database
    /// that came back is seen on the next probe.
    fn probe(&mut self) -> Result<(), ConnectError> {
        if let Some(connection) = &mut self.connection {
            if ConnectionManager::check(connection).is_ok() {
                return Ok(());
            }
            self.connection = None;
        }
        let mut connection = self.manager.establish()?;
        ConnectionManager::check(&mut connection)?;
        self.connection = Some(connection);
        Ok(())
    }
}

counted_sync_actor!(DbProbe);

/// One probe: how long the round trip took, or why it failed.
#[derive(Message)]
#[rtype(result = "Result<Duration, String>")]
pub struct ProbeDatabase;

impl Handler<ProbeDatabase> for DbProbe {
    type Result = Result<Duration, String>;

    fn handle(&mut self, _msg: ProbeDatabase, ctx: &mut SyncContext<Self>) -> Self::Result {
        let started = Instant::now();
        match catch_panic(|| self.probe()) {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(error)) => Err(error.message),
            Err(payload) => {
                // The SyncArbiter builds a fresh probe (and connection) after stop().
                ctx.stop();
                self.reporter.report(ACTOR, &payload);
                Err("the probe panicked".into())
            }
        }
    }
}
