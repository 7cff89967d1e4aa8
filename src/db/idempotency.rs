//! The responses of requests made with an `Idempotency-Key`, one per client,
//! route and key. A response is stored by the writer in the transaction that
//! writes what its request created, so it exists exactly when those effects
//! do; for [`TTL`] a retry is answered from it (see `crate::http::idempotency`).

use std::time::Duration;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use time::PrimitiveDateTime;

use super::models::IdempotencyRow;
use super::schema::idempotency_keys;
use super::{DbConnection, DbError};

/// How long a key is remembered: a retry later than this runs as a new request.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A response to store along with the write that produced it.
#[derive(Debug, Clone)]
pub struct Record {
    pub row: IdempotencyRow,
    /// The `created_at` of an expired row of the same key that the lookup
    /// found not yet pruned: that row (and no newer one) is removed first.
    pub replaces: Option<PrimitiveDateTime>,
}

/// The row of `key`, live or expired: the caller decides by its age.
pub fn find(
    conn: &mut DbConnection,
    client_id: &str,
    route: &str,
    key: &str,
) -> QueryResult<Option<IdempotencyRow>> {
    idempotency_keys::table
        .find((client_id, route, key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .optional()
}

/// Stores `records` in the caller's transaction. A key that another process
/// stored since the lookup makes this fail with a unique violation
/// ([`is_key_taken`]); on PostgreSQL, one still uncommitted makes it wait
/// for that transaction first. No records, no statement.
pub fn store_all<'a>(
    conn: &mut DbConnection,
    records: impl IntoIterator<Item = &'a Record>,
) -> QueryResult<()> {
    let mut rows = Vec::new();
    for Record { row, replaces } in records {
        if let Some(expired) = replaces {
            diesel::delete(
                idempotency_keys::table
                    .find((&row.client_id, &row.route, &row.idempotency_key))
                    .filter(idempotency_keys::created_at.eq(expired)),
            )
            .execute(conn)?;
        }
        rows.push(row.clone());
    }
    insert_many!(&mut *conn, idempotency_keys::table, &rows);
    Ok(())
}

/// Whether `error` is the unique violation of a key stored first by another
/// request: one in another process, whose in-flight mark this one's could
/// not see. That request is (or was just) in flight: a conflict, not a fault.
pub fn is_key_taken(error: &DbError) -> bool {
    match error {
        DbError::Query(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            // PostgreSQL names the table; SQLite only in its message.
            info.table_name() == Some("idempotency_keys")
                || info.message().contains("idempotency_keys")
        }
        _ => false,
    }
}

/// Removes keys stored before `before`, the oldest first, about `batch` at
/// a time (keys stored in the same microsecond as the last go with it);
/// returns how many. Runs in the caller's transaction (the writer's).
pub fn prune(conn: &mut DbConnection, before: PrimitiveDateTime, batch: i64) -> QueryResult<usize> {
    let expired = || idempotency_keys::table.filter(idempotency_keys::created_at.lt(before));
    let last: Option<PrimitiveDateTime> = expired()
        .order(idempotency_keys::created_at.asc())
        .select(idempotency_keys::created_at)
        .offset(batch.max(1) - 1)
        .first(conn)
        .optional()?;
    match last {
        Some(last) => {
            diesel::delete(expired().filter(idempotency_keys::created_at.le(last))).execute(conn)
        }
        None => diesel::delete(expired()).execute(conn),
    }
}
