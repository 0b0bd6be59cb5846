//! The PasswordHasher: argon2 off the async threads, on a SyncArbiter of its own — never on
//! an actix-web worker and never on a DbExecutor thread holding a connection. Each thread
//! owns the 19 MiB one argon2id run needs and reuses it for every hash and check, so the
//! process holds at most threads × 19 MiB for passwords however many sign-ins it served.
//! Admission is bounded; waiting requests hold no argon2 memory.

use std::{sync::Arc, time::Duration};

use actix::{Addr, Handler, MailboxError, Message, SyncArbiter, SyncContext};

use super::{
    admission::Admission,
    failure::ActorFailure,
    pool_threads::{supervised_pool_actor, PoolThreads},
    report::ActorReport,
    restarts::ActorRestarts,
    supervision::{RestartReporter, Supervision},
};
use crate::{
    auth::password::{hash_password_with, verify_password_with, HashError, HashMemory},
    metrics::Metrics,
};

const ACTOR: &str = super::names::PASSWORD_HASHER;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A hash of a random password nobody kept, with the parameters of every new hash:
/// verifying against it costs what a real check costs, so a login for an unknown email
/// takes as long as a wrong password (`dummy_hash_costs_a_real_check` keeps them equal).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$+pkN5AsHMq29eEoEAgmdpQ$7E7n984ZrLKygig0mjkiaJAavfScd0Tu+vF/cinP2+k";

pub struct PasswordHasher {
    /// This thread's argon2 working memory, reused by every run (allocated at the first).
    memory: HashMemory,
    metrics: Arc<Metrics>,
    supervision: Supervision,
    threads: PoolThreads,
}

impl PasswordHasher {
    fn completed(&self, operation: &str) {
        self.metrics.password_hasher_runs.with_label_values(&[operation]).inc();
    }
}

supervised_pool_actor!(PasswordHasher);

/// Why a password was neither hashed nor checked.
#[derive(Debug, derive_more::Display, derive_more::From)]
pub enum PasswordError {
    /// Every thread crashed too often and waits out its restart backoff.
    #[display("password checks are restarting")]
    Restarting { retry_after_secs: u64 },
    /// The queue is full: a sign-in storm is shed.
    #[display("too many password checks at once")]
    Busy,
    #[display("password check timed out")]
    TimedOut,
    #[display("password hasher mailbox closed")]
    MailboxClosed,
    #[display("{_0}")]
    #[from]
    Actor(ActorFailure),
    #[display("{_0}")]
    #[from]
    Hash(HashError),
}

impl std::error::Error for PasswordError {}

#[derive(Message)]
#[rtype(result = "Result<String, PasswordError>")]
struct Hash(String);

#[derive(Message)]
#[rtype(result = "Result<bool, PasswordError>")]
struct Verify {
    password: String,
    hash: Option<String>,
}

impl Handler<Hash> for PasswordHasher {
    type Result = Result<String, PasswordError>;
    fn handle(&mut self, msg: Hash, ctx: &mut SyncContext<Self>) -> Self::Result {
        let memory = &mut self.memory;
        let hashed = self.supervision.catch(ctx, || hash_password_with(memory, &msg.0)).and_then(|hashed| Ok(hashed?));
        if hashed.is_ok() {
            self.completed("hash");
        }
        hashed
    }
}

impl Handler<Verify> for PasswordHasher {
    type Result = Result<bool, PasswordError>;
    fn handle(&mut self, msg: Verify, ctx: &mut SyncContext<Self>) -> Self::Result {
        let memory = &mut self.memory;
        let verified = self.supervision.catch(ctx, || match &msg.hash {
            Some(hash) => verify_password_with(memory, &msg.password, hash),
            None => {
                verify_password_with(memory, &msg.password, DUMMY_HASH);
                false
            }
        });
        if verified.is_ok() {
            self.completed("verify");
        }
        verified
    }
}

/// The way in: bounded and timed out, like the database gateway.
#[derive(Clone)]
pub struct Passwords {
    addr: Addr<PasswordHasher>,
    admission: Arc<Admission>,
    threads: PoolThreads,
    restarts: Arc<ActorRestarts>,
    metrics: Arc<Metrics>,
}

impl Passwords {
    pub fn start(threads: usize, reporter: RestartReporter, metrics: Arc<Metrics>) -> Self {
        let pool = PoolThreads::new(ACTOR, threads);
        let restarts = reporter.restarts_of(ACTOR);
        let (counted, runs) = (pool.clone(), Arc::clone(&metrics));
        let addr = SyncArbiter::start(threads, move || PasswordHasher {
            memory: HashMemory::default(),
            metrics: Arc::clone(&runs),
            supervision: reporter.supervision(ACTOR),
            threads: counted.clone(),
        });
        // Waiting requests hold no argon2 memory (only running hashes do), so the queue can
        // be deep; it is bounded so a sign-in storm is shed instead of piling up.
        Self { addr, admission: Arc::new(Admission::new(threads * 64, None)), threads: pool, restarts, metrics }
    }

    /// This pool's row in the actors API, read from its atomics (asking a thread would
    /// wait behind the hashes in its queue).
    pub fn report(&self) -> ActorReport {
        let runs = |operation: &str| self.metrics.password_hasher_runs.with_label_values(&[operation]).get();
        self.threads
            .report(serde_json::json!({
                "algorithm": "argon2id",
                "hashes_completed": runs("hash"),
                "verifications_completed": runs("verify"),
            }))
            .with_queue(self.admission.in_flight(), self.admission.capacity())
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.ask(Hash(password)).await?
    }

    /// `hash: None` (unknown account) does the full work of a check and answers false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, PasswordError> {
        self.ask(Verify { password, hash }).await?
    }

    async fn ask<M>(&self, msg: M) -> Result<M::Result, PasswordError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        PasswordHasher: Handler<M>,
    {
        if self.threads.alive() == 0 && self.restarts.is_down() {
            return Err(PasswordError::Restarting { retry_after_secs: self.restarts.retry_after_secs() });
        }
        let _slot = self.admission.try_admit().ok_or(PasswordError::Busy)?;
        self.addr.send(msg).timeout(TIMEOUT).await.map_err(|error| match error {
            MailboxError::Timeout => PasswordError::TimedOut,
            MailboxError::Closed => PasswordError::MailboxClosed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::hash_password;

    #[test]
    fn dummy_hash_costs_a_real_check() {
        // Same algorithm, version, parameters and lengths as a hash made today.
        let real = hash_password("anything at all").unwrap();
        let shape = |hash: &str| {
            let parts: Vec<&str> = hash.split('$').collect();
            (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned(), parts[4].len(), parts[5].len())
        };
        assert_eq!(shape(DUMMY_HASH), shape(&real));
        assert!(!verify_password_with(&mut HashMemory::default(), "", DUMMY_HASH));
    }
}
