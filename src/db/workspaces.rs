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

pub fn exists(conn: &mut DbConnection, id: &str) -> QueryResult<bool> {
    workspaces::table
        .find(id)
        .select(workspaces::id)
        .first::<String>(conn)
        .optional()
        .map(|found| found.is_some())
}

pub fn list(conn: &mut DbConnection) -> QueryResult<Vec<WorkspaceRow>> {
    workspaces::table
        .select(WorkspaceRow::as_select())
        .order(workspaces::id.asc())
        .load(conn)
}
