//! The shape of every database operation: a type of its own that runs with a connection.
//! The DbExecutor (in `actors`) runs them; this module only says what one is, so the SQL
//! modules depend on nothing above them.

use super::DbConnection;
use crate::error::AppError;

/// One database use case, run on a DbExecutor thread with a pooled connection.
pub trait UseCase: Send + 'static {
    type Output: Send + 'static;
    fn run(self, conn: &mut DbConnection) -> Result<Self::Output, AppError>;
}
