//! The readiness probe's own thread and connection. Probing through the DbExecutor queue
//! would make the probe wait behind the very requests it is judging (and be shed, or time
//! out, exactly when the database is slow); this thread holds one connection outside the
//! pool and is asked by the Health actor only, one probe at a time.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{Actor, ActorContext, Addr, Handler, Message, SyncArbiter, SyncContext};

use super::supervision::{catch_panic, RestartReporter};
use crate::{
    config::DatabaseConfig,
    db::{connection::ConnectError, ConnectionManager, DbConnection},
};

pub const ACTOR: &str = "db_probe";

pub struct DbProbe {
    manager: ConnectionManager,
    connection: Option<DbConnection>,
    reporter: RestartReporter,
    alive: Arc<AtomicUsize>,
}

/// The running probe thread: its address and whether it is alive.
#[derive(Clone)]
pub struct ProbeThread {
    pub addr: Addr<DbProbe>,
    alive: Arc<AtomicUsize>,
}

impl ProbeThread {
    pub fn report(&self) -> super::report::ActorReport {
        use super::report::{as_u64, ActorKind, ActorReport, Instances};
        let instances = Instances { configured: 1, alive: as_u64(self.alive.load(Ordering::Acquire)) };
        ActorReport::new(
            ACTOR,
            ActorKind::SyncPool,
            instances,
            serde_json::json!({"connection": "own, outside the pool"}),
        )
    }
}

impl DbProbe {
    pub fn start(config: &DatabaseConfig, reporter: RestartReporter) -> ProbeThread {
        let manager = ConnectionManager::new(config);
        let alive = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&alive);
        let addr = SyncArbiter::start(1, move || DbProbe {
            manager: manager.clone(),
            connection: None,
            reporter: reporter.clone(),
            alive: Arc::clone(&counted),
        });
        ProbeThread { addr, alive }
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

impl Actor for DbProbe {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.alive.fetch_add(1, Ordering::AcqRel);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }
}

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
