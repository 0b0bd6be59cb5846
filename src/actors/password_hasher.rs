//! The PasswordHasher: argon2 off the async threads, on a SyncArbiter of its own — never on
//! an actix-web worker and never on a DbExecutor thread holding a connection. Admission is
//! bounded, because each hash takes 19 MiB.

use std::{sync::Arc, time::Duration};

use actix::{ActorContext, Addr, Handler, MailboxError, Message, SyncArbiter, SyncContext};

use super::{
    admission::Admission,
    pool_threads::{counted_sync_actor, PoolThreads},
    report::ActorReport,
    supervision::{catch_panic, RestartReporter},
};
use crate::{
    auth::password::{hash_password, verify_password},
    error::AppError,
};

const ACTOR: &str = "password_hasher";
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct PasswordHasher {
    /// A hash of nothing anyone knows: verifying against it costs what a real check costs,
    /// so a login for an unknown email takes as long as a wrong password.
    dummy_hash: String,
    reporter: RestartReporter,
    threads: PoolThreads,
}

counted_sync_actor!(PasswordHasher);

#[derive(Message)]
#[rtype(result = "Result<String, AppError>")]
struct Hash(String);

#[derive(Message)]
#[rtype(result = "Result<bool, AppError>")]
struct Verify {
    password: String,
    hash: Option<String>,
}

impl Handler<Hash> for PasswordHasher {
    type Result = Result<String, AppError>;
    fn handle(&mut self, msg: Hash, ctx: &mut SyncContext<Self>) -> Self::Result {
        catch_panic(|| hash_password(&msg.0)).unwrap_or_else(|payload| {
            ctx.stop();
            Err(self.reporter.report(ACTOR, &payload))
        })
    }
}

impl Handler<Verify> for PasswordHasher {
    type Result = Result<bool, AppError>;
    fn handle(&mut self, msg: Verify, ctx: &mut SyncContext<Self>) -> Self::Result {
        let dummy = &self.dummy_hash;
        catch_panic(|| match &msg.hash {
            Some(hash) => verify_password(&msg.password, hash),
            None => {
                verify_password(&msg.password, dummy);
                false
            }
        })
        .map_err(|payload| {
            ctx.stop();
            self.reporter.report(ACTOR, &payload)
        })
    }
}

/// The way in: bounded and timed out, like the database gateway.
#[derive(Clone)]
pub struct Passwords {
    addr: Addr<PasswordHasher>,
    admission: Arc<Admission>,
    threads: PoolThreads,
}

impl Passwords {
    pub fn start(threads: usize, reporter: RestartReporter) -> Result<Self, AppError> {
        let dummy_hash = hash_password("storefront-dummy-password-never-valid")?;
        let pool = PoolThreads::new(ACTOR, threads);
        let counted = pool.clone();
        let addr = SyncArbiter::start(threads, move || PasswordHasher {
            dummy_hash: dummy_hash.clone(),
            reporter: reporter.clone(),
            threads: counted.clone(),
        });
        // Waiting requests hold no argon2 memory (only running hashes do), so the queue can
        // be deep; it is bounded so a sign-in storm is shed instead of piling up.
        Ok(Self { addr, admission: Arc::new(Admission::new(threads * 64, None)), threads: pool })
    }

    /// This pool's row in the actors API, read from its atomics (asking a thread would
    /// wait behind the hashes in its queue).
    pub fn report(&self) -> ActorReport {
        self.threads
            .report(serde_json::json!({"algorithm": "argon2id"}))
            .with_queue(self.admission.in_flight(), self.admission.capacity())
    }

    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        self.ask(Hash(password)).await?
    }

    /// `hash: None` (unknown account) does the full work of a check and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AppError> {
        self.ask(Verify { password, hash }).await?
    }

    async fn ask<M>(&self, msg: M) -> Result<M::Result, AppError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        PasswordHasher: Handler<M>,
    {
        let _slot = self
            .admission
            .try_admit()
            .ok_or_else(|| AppError::unavailable("Too many sign-ins at once; try again shortly."))?;
        self.addr.send(msg).timeout(TIMEOUT).await.map_err(|error| match error {
            MailboxError::Timeout => AppError::unavailable("Password check timed out; try again shortly."),
            MailboxError::Closed => AppError::Internal("password hasher mailbox closed".into()),
        })
    }
}
