//! Repository functions for events: each reads one workspace's.

use diesel::prelude::*;

use super::DbConnection;
use super::models::EventRow;
use super::schema::{events, workspaces};
use crate::domain::WorkspaceId;

pub fn find(
    conn: &mut DbConnection,
    workspace: &WorkspaceId,
    id: &str,
) -> QueryResult<Option<EventRow>> {
    events::table
        .find(id)
        .filter(events::workspace_id.eq(workspace.as_str()))
        .select(EventRow::as_select())
        .first(conn)
        .optional()
}

/// A page of `workspace`'s feed: events after `after`, oldest first,
/// optionally only of some types or one message.
pub fn feed(
    conn: &mut DbConnection,
    workspace: &str,
    after: i64,
    types: &[&str],
    message_id: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut query = events::table
        .filter(events::workspace_id.eq(workspace))
        .filter(events::feed_position.gt(after))
        .order(events::feed_position.asc())
        .select(EventRow::as_select())
        .limit(limit)
        .into_boxed();
    if !types.is_empty() {
        query = query.filter(events::event_type.eq_any(types.to_vec()));
    }
    if let Some(message_id) = message_id {
        query = query.filter(events::message_id.eq(message_id));
    }
    query.load(conn)
}

/// What a feed read asks for.
#[derive(Debug, Clone)]
pub struct FeedQuery {
    /// Whose feed.
    pub workspace: String,
    /// The cursor's position; `None` reads from the oldest retained event.
    pub after: Option<i64>,
    /// Only these event types; empty: all.
    pub types: Vec<&'static str>,
    pub message_id: Option<String>,
    pub limit: i64,
}

/// What a feed read found.
#[derive(Debug)]
pub enum FeedRead {
    Page(Vec<EventRow>),
    /// The cursor points before the retained events: some it has not seen
    /// are gone, so no page after it can be complete.
    Expired,
}

/// A page of the feed, or `Expired` if retention removed events the cursor
/// has not seen.
///
/// `pruned_through` is read after the rows, never before: read first, a
/// prune committing between the two reads would remove events the page
/// should have begun with, and the page would skip them unnoticed. Read
/// after, such a prune shows in `pruned_through` and the cursor is gone.
pub fn read_feed(conn: &mut DbConnection, query: &FeedQuery) -> QueryResult<FeedRead> {
    let rows = feed(
        conn,
        &query.workspace,
        query.after.unwrap_or(0),
        &query.types,
        query.message_id.as_deref(),
        query.limit,
    )?;
    if let Some(after) = query.after
        && after < pruned_through(conn, &query.workspace)?
    {
        return Ok(FeedRead::Expired);
    }
    Ok(FeedRead::Page(rows))
}

/// `workspace`'s events up to this position have been pruned (none: 0).
pub fn pruned_through(conn: &mut DbConnection, workspace: &str) -> QueryResult<i64> {
    workspaces::table
        .find(workspace)
        .select(workspaces::pruned_through)
        .first(conn)
        .optional()
        .map(Option::unwrap_or_default)
}

/// Removes `workspace`'s events created before `before` with their
/// deliveries and attempts, at most `batch` at a time; returns how many
/// were removed. Runs in the caller's transaction (the writer's).
pub fn prune(
    conn: &mut DbConnection,
    workspace: &str,
    before: time::PrimitiveDateTime,
    batch: i64,
) -> QueryResult<usize> {
    use super::schema::{deliveries, delivery_attempts};

    let doomed: Vec<(String, Option<i64>)> = events::table
        .filter(events::workspace_id.eq(workspace))
        .filter(events::created_at.lt(before))
        .order(events::feed_position.asc())
        .select((events::id, events::feed_position))
        .limit(batch)
        .load(conn)?;
    if doomed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = doomed.iter().map(|(id, _)| id.as_str()).collect();
    let delivery_ids = deliveries::table
        .filter(deliveries::event_id.eq_any(&ids))
        .select(deliveries::id);
    diesel::delete(
        delivery_attempts::table.filter(delivery_attempts::delivery_id.eq_any(delivery_ids)),
    )
    .execute(conn)?;
    diesel::delete(deliveries::table.filter(deliveries::event_id.eq_any(&ids))).execute(conn)?;
    diesel::delete(events::table.filter(events::id.eq_any(&ids))).execute(conn)?;
    if let Some(highest) = doomed.iter().filter_map(|(_, p)| *p).max() {
        diesel::update(
            workspaces::table
                .find(workspace)
                .filter(workspaces::pruned_through.lt(highest)),
        )
        .set(workspaces::pruned_through.eq(highest))
        .execute(conn)?;
    }
    Ok(doomed.len())
}
