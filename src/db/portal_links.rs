//! Portal links that were exchanged: each signs in once.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::schema::portal_link_uses;

/// Records the use of link `jti`; `false` if it was used already. (Read
/// first, not by catching the insert's unique violation, which would abort
/// the writer's transaction on PostgreSQL; a use by another process in
/// between still fails the insert.)
pub fn use_once(
    conn: &mut DbConnection,
    jti: &str,
    client_id: &str,
    now: PrimitiveDateTime,
    expires_at: PrimitiveDateTime,
) -> QueryResult<bool> {
    let used: i64 = portal_link_uses::table.find(jti).count().get_result(conn)?;
    if used > 0 {
        return Ok(false);
    }
    diesel::insert_into(portal_link_uses::table)
        .values((
            portal_link_uses::jti.eq(jti),
            portal_link_uses::client_id.eq(client_id),
            portal_link_uses::used_at.eq(now),
            portal_link_uses::expires_at.eq(expires_at),
        ))
        .execute(conn)?;
    Ok(true)
}

/// Forgets up to `batch` uses of links that expired before `before` (an
/// expired link is refused anyway); returns how many.
pub fn prune(conn: &mut DbConnection, before: PrimitiveDateTime, batch: i64) -> QueryResult<usize> {
    let expired = portal_link_uses::table
        .filter(portal_link_uses::expires_at.lt(before))
        .select(portal_link_uses::jti)
        .limit(batch)
        .load::<String>(conn)?;
    diesel::delete(portal_link_uses::table.filter(portal_link_uses::jti.eq_any(&expired)))
        .execute(conn)
}
