//! Faults an operator can inject on purpose (enabled only with CHAOS_TOKEN), to watch the
//! service heal itself and to prove that it does, in tests.

use actix::Message;

use super::failure::ActorFailure;
use crate::db::{outbox::Outbox, DbConnection, DbError, UseCase};

/// Makes the receiving async actor panic inside its handler.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ActorFailure>")]
pub struct Crash;

impl Crash {
    pub fn detonate(self) {
        panic!("fault injected: crash requested by an operator");
    }
}

/// Makes a DbExecutor thread panic inside its handler.
pub struct PanicWorker;

impl UseCase for PanicWorker {
    type Output = ();
    fn run(self, _conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        panic!("fault injected: DbExecutor panic requested by an operator");
    }
}

/// Holds a DbExecutor thread busy, as a slow query would.
pub struct StallWorker {
    pub duration: std::time::Duration,
}

impl UseCase for StallWorker {
    type Output = ();
    fn run(self, _conn: &mut DbConnection, _outbox: &mut Outbox) -> Result<(), DbError> {
        std::thread::sleep(self.duration);
        Ok(())
    }
}
