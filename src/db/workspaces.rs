//! Repository functions for workspaces.

use diesel::prelude::*;

use super::DbConnection;
use super::models::WorkspaceRow;
use super::schema::workspaces;

pub fn insert(conn: &mut DbConnection, row: &WorkspaceRow) -> QueryResult<()> {
    diesel::insert_into(workspaces::table)
        .values(row)
        .execute(conn)
        .map(drop)
}

pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<WorkspaceRow>> {
    workspaces::table
        .find(id)
        .select(WorkspaceRow::as_select())
        .first(conn)
        .optional()
}

/// Writes `row`'s limits.
pub fn set_limits(conn: &mut DbConnection, row: &WorkspaceRow) -> QueryResult<()> {
    diesel::update(workspaces::table.find(&row.id))
        .set((
            workspaces::max_subscriptions.eq(row.max_subscriptions),
            workspaces::api_per_second.eq(row.api_per_second),
            workspaces::api_burst.eq(row.api_burst),
            workspaces::retention_days.eq(row.retention_days),
        ))
        .execute(conn)
        .map(drop)
}

pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<WorkspaceRow>> {
    workspaces::table
        .select(WorkspaceRow::as_select())
        .order(workspaces::id.asc())
        .load(conn)
}
