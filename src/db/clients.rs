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

/// What a token's verification needs to know of a client.
#[derive(Debug, Clone)]
pub struct Standing {
    pub id: String,
    pub workspace_id: String,
    pub revoked: bool,
}

/// Every client's standing.
pub fn standing(conn: &mut DbConnection) -> QueryResult<Vec<Standing>> {
    let rows: Vec<(String, String, Option<PrimitiveDateTime>)> = clients::table
        .select((clients::id, clients::workspace_id, clients::revoked_at))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, workspace_id, revoked_at)| Standing {
            id,
            workspace_id,
            revoked: revoked_at.is_some(),
        })
        .collect())
}

pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<ClientRow>> {
    clients::table
        .select(ClientRow::as_select())
        .order(clients::id.asc())
        .load(conn)
}

/// Whether any client is registered.
pub fn any(conn: &mut DbConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(clients::table.select(clients::id))).get_result(conn)
}

/// Marks the client revoked; returns false if it does not exist or already
/// was. On PostgreSQL, API processes are told at once.
pub fn revoke(conn: &mut DbConnection, id: &str, at: PrimitiveDateTime) -> QueryResult<bool> {
    let revoked = diesel::update(
        clients::table
            .find(id)
            .filter(clients::revoked_at.is_null()),
    )
    .set(clients::revoked_at.eq(at))
    .execute(conn)?
        == 1;
    if revoked && let DbConnection::Postgres(conn) = conn {
        diesel::sql_query(format!("NOTIFY {}", crate::auth::revocations::CHANNEL)).execute(conn)?;
    }
    Ok(revoked)
}
