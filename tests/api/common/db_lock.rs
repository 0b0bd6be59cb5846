//! Holding a lock in the test's database from a connection of the test's own, so that the
//! server's next write to it blocks inside its transaction, as behind a slow transaction
//! of another client.

use std::{sync::mpsc, thread};

use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};

/// The lock, held until `release` (or drop).
pub struct HeldLock {
    release: Option<mpsc::Sender<()>>,
    holder: Option<thread::JoinHandle<()>>,
}

impl HeldLock {
    /// Holds the row of `table` with this `id`: on PostgreSQL a row lock
    /// (`SELECT … FOR UPDATE` in an open transaction), on SQLite the write lock of the
    /// whole database (`BEGIN IMMEDIATE`). Returns once the lock is held.
    pub fn row(database_url: &str, table: &str, id: &str) -> Self {
        let (url, sql) = (database_url.to_owned(), format!("SELECT 1 FROM {table} WHERE id = '{id}' FOR UPDATE"));
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            if let Some(path) = url.strip_prefix("sqlite://") {
                let mut conn = SqliteConnection::establish(path).expect("open the test's SQLite database");
                diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).expect("set busy_timeout");
                diesel::sql_query("BEGIN IMMEDIATE").execute(&mut conn).expect("take SQLite's write lock");
                locked_tx.send(()).expect("the test waits for the lock");
                let _ = release_rx.recv();
                diesel::sql_query("ROLLBACK").execute(&mut conn).expect("release SQLite's write lock");
            } else {
                let mut conn = PgConnection::establish(&url).expect("connect to the test's PostgreSQL database");
                diesel::sql_query("BEGIN").execute(&mut conn).expect("begin");
                diesel::sql_query(sql).execute(&mut conn).expect("lock the row");
                locked_tx.send(()).expect("the test waits for the lock");
                let _ = release_rx.recv();
                diesel::sql_query("ROLLBACK").execute(&mut conn).expect("release the row");
            }
        });
        locked_rx.recv().expect("the lock is taken");
        Self { release: Some(release_tx), holder: Some(holder) }
    }

    /// Lets the blocked writes go on.
    pub fn release(mut self) {
        self.let_go().expect("the lock holder ends cleanly");
    }

    fn let_go(&mut self) -> thread::Result<()> {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        self.holder.take().map_or(Ok(()), thread::JoinHandle::join)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // A test that failed while holding it: let the server's writes go on regardless.
        let _ = self.let_go();
    }
}
