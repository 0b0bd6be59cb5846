//! The shape of every database operation: a type of its own that runs with a connection.
//! The DbExecutor (in `actors`) runs them; this module only says what one is, so the SQL
//! modules depend on nothing above them.

use super::{outbox::Outbox, DbConnection};
use crate::db::DbError;

/// One database use case, run on a DbExecutor thread with a pooled connection. The events
/// it describes its writes with go through `outbox`, which carries their attribution.
pub trait UseCase: Send + 'static {
    type Output: Send + 'static;
    fn run(self, conn: &mut DbConnection, outbox: &mut Outbox) -> Result<Self::Output, DbError>;
}
