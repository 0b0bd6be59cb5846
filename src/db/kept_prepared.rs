//! Statements that stay prepared on their connection, keyed by their SQL text.
//!
//! diesel never keeps an `UPDATE`, a multi-row `INSERT` or a `sql_query` prepared (its
//! `statement_cache` docs): their SQL could take an unbounded number of shapes. So every
//! call is parsed and planned again, which took about 18% of the machine on PostgreSQL in
//! an order run (`bench/order-anatomy.md`). A statement whose SQL takes only a few shapes
//! is safe to keep: the cache holds one entry per shape (SQL text and bind types), for
//! the life of the connection.
//!
//! Run it with `get_result` or `load` (add a `RETURNING` if need be), never `execute`:
//! diesel executes through a reference, whose `QueryFragment` does not pass on
//! `is_safe_to_cache_prepared`, so the statement would be prepared anew each time
//! (`orders::postgres_prepared` in the tests checks the statements of an order).

use diesel::{
    backend::Backend,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    QueryResult, RunQueryDsl,
};

/// A statement diesel keeps prepared under its SQL text (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct KeptPrepared<Statement>(Statement);

pub trait KeepPrepared: Sized {
    /// Only for a statement whose SQL takes a handful of shapes: each one stays prepared
    /// on every connection that runs it.
    fn keep_prepared(self) -> KeptPrepared<Self> {
        KeptPrepared(self)
    }
}

impl<Statement: QueryId> KeepPrepared for Statement {}

impl<Statement: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for KeptPrepared<Statement> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the cache key is the SQL text and the bind types, never the type, so
/// each shape of the statement gets an entry of its own.
impl<Statement> QueryId for KeptPrepared<Statement> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Statement: Query> Query for KeptPrepared<Statement> {
    type SqlType = Statement::SqlType;
}

impl<Statement, Conn> RunQueryDsl<Conn> for KeptPrepared<Statement> {}
