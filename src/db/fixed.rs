//! Statements of fixed SQL text, which a connection prepares once and then
//! reuses.
//!
//! diesel prepares every `UPDATE` of its DSL, every SQL literal and, on
//! SQLite, every `IN (…)` afresh, because their text could vary without
//! bound. On the writer's hot path that parsing (and on PostgreSQL,
//! planning) was a large part of the cost of a batch. A [`Fixed`] statement
//! is written once, in SQL both backends read, with `?` where each bind
//! goes; diesel puts in the backend's own placeholders and keeps the
//! prepared statement, keyed by its text.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp, Untyped};
use diesel::sqlite::Sqlite;
use time::PrimitiveDateTime;

use super::DbConnection;

/// A value bound to a `?` of a [`Fixed`] statement.
#[derive(Debug, Clone, Copy)]
pub enum Bind<'a> {
    Text(&'a str),
    OptionalText(Option<&'a str>),
    BigInt(i64),
    Integer(i32),
    OptionalInteger(Option<i32>),
    Timestamp(PrimitiveDateTime),
    OptionalTimestamp(Option<PrimitiveDateTime>),
}

#[derive(Debug, Clone)]
pub struct Fixed<'a> {
    sql: &'static str,
    binds: Vec<Bind<'a>>,
}

impl<'a> Fixed<'a> {
    /// `sql` has a `?` for each bind, in order, and none elsewhere.
    pub fn new(sql: &'static str, binds: impl IntoIterator<Item = Bind<'a>>) -> Self {
        let binds: Vec<Bind<'a>> = binds.into_iter().collect();
        debug_assert_eq!(sql.matches('?').count(), binds.len(), "{sql}");
        Self { sql, binds }
    }

    pub fn execute(self, conn: &mut DbConnection) -> QueryResult<usize> {
        match conn {
            DbConnection::Sqlite(conn) => RunQueryDsl::execute(self, conn),
            DbConnection::Postgres(conn) => RunQueryDsl::execute(self, conn),
        }
    }

    /// The rows it returns, by column name.
    pub fn load<T>(self, conn: &mut DbConnection) -> QueryResult<Vec<T>>
    where
        T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static,
    {
        match conn {
            DbConnection::Sqlite(conn) => RunQueryDsl::load(self, conn),
            DbConnection::Postgres(conn) => RunQueryDsl::load(self, conn),
        }
    }
}

impl QueryId for Fixed<'_> {
    type QueryId = ();
    // Keyed by its text, which is always the same.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Fixed<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Fixed<'_> {}

/// The SQL with each bind in place; the same for both backends.
macro_rules! walk_fixed {
    ($backend:ty) => {
        impl QueryFragment<$backend> for Fixed<'_> {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, $backend>) -> QueryResult<()> {
                let mut parts = self.sql.split('?');
                if let Some(first) = parts.next() {
                    out.push_sql(first);
                }
                for (bind, part) in self.binds.iter().zip(parts) {
                    match bind {
                        Bind::Text(v) => out.push_bind_param::<Text, _>(*v)?,
                        Bind::OptionalText(v) => out.push_bind_param::<Nullable<Text>, _>(v)?,
                        Bind::BigInt(v) => out.push_bind_param::<BigInt, _>(v)?,
                        Bind::Integer(v) => out.push_bind_param::<Integer, _>(v)?,
                        Bind::OptionalInteger(v) => {
                            out.push_bind_param::<Nullable<Integer>, _>(v)?
                        }
                        Bind::Timestamp(v) => out.push_bind_param::<Timestamp, _>(v)?,
                        Bind::OptionalTimestamp(v) => {
                            out.push_bind_param::<Nullable<Timestamp>, _>(v)?
                        }
                    }
                    out.push_sql(part);
                }
                Ok(())
            }
        }
    };
}

walk_fixed!(Sqlite);
walk_fixed!(Pg);

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::backend::Backend;
    use diesel::query_builder::QueryBuilder;

    fn sql<DB>(statement: &Fixed<'_>, mut builder: DB::QueryBuilder) -> String
    where
        for<'a> Fixed<'a>: QueryFragment<DB>,
        DB: Backend + Default,
    {
        statement
            .to_sql(&mut builder, &DB::default())
            .expect("builds");
        builder.finish()
    }

    #[test]
    fn each_question_mark_becomes_the_backends_placeholder() {
        let statement = Fixed::new(
            "UPDATE t SET a = ? WHERE id = ? AND b IS NOT NULL",
            [Bind::BigInt(1), Bind::Text("x")],
        );
        assert_eq!(
            sql::<Sqlite>(&statement, Default::default()),
            "UPDATE t SET a = ? WHERE id = ? AND b IS NOT NULL"
        );
        assert_eq!(
            sql::<Pg>(&statement, Default::default()),
            "UPDATE t SET a = $1 WHERE id = $2 AND b IS NOT NULL"
        );
    }
}
