//! Repository functions for API clients.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::models::ClientRow;
use super::schema::clients;

pub fn insert(conn: &mut DbConnection, client: &ClientRow) -> QueryResult<()> {
    diesel::insert_into(clients::table)
        .values(client)
        .execute(conn)
        .map(drop)
}

pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<ClientRow>> {
    clients::table
        .find(id)
        .select(ClientRow::as_select())
        .first(conn)
        .optional()
}

/// Whether the client exists and is not revoked.
pub fn is_active(conn: &mut DbConnection, id: &str) -> QueryResult<bool> {
    clients::table
        .find(id)
        .filter(clients::revoked_at.is_null())
        .select(clients::id)
        .first::<String>(conn)
        .optional()
        .map(|found| found.is_some())
}

pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<ClientRow>> {
    clients::table
        .select(ClientRow::as_select())
        .order(clients::id.asc())
        .load(conn)
}

/// Marks the client revoked; returns false if it does not exist or already was.
pub fn revoke(conn: &mut DbConnection, id: &str, at: PrimitiveDateTime) -> QueryResult<bool> {
    diesel::update(
        clients::table
            .find(id)
            .filter(clients::revoked_at.is_null()),
    )
    .set(clients::revoked_at.eq(at))
    .execute(conn)
    .map(|updated| updated == 1)
}
