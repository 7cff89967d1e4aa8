//! Repository functions for messages and their comments. Each takes a
//! connection so that callers can compose several in one transaction, and
//! reads only within the workspace it is given: a message of another
//! workspace is not found, like a missing one.

use diesel::prelude::*;

use super::DbConnection;
use super::models::{CommentRow, MessageRow};
use super::schema::{comments, messages};
use crate::domain::{CommentId, MessageId, WorkspaceId};

pub fn insert_message(conn: &mut DbConnection, message: &MessageRow) -> QueryResult<()> {
    diesel::insert_into(messages::table)
        .values(message)
        .execute(conn)
        .map(drop)
}

pub fn find_message(
    conn: &mut DbConnection,
    workspace: &WorkspaceId,
    id: &MessageId,
) -> QueryResult<Option<MessageRow>> {
    messages::table
        .find(id.as_str())
        .filter(messages::workspace_id.eq(workspace.as_str()))
        .select(MessageRow::as_select())
        .first(conn)
        .optional()
}

pub fn message_exists(
    conn: &mut DbConnection,
    workspace: &WorkspaceId,
    id: &MessageId,
) -> QueryResult<bool> {
    // Not `EXISTS`: booleans are not among the types a MultiConnection maps.
    messages::table
        .find(id.as_str())
        .filter(messages::workspace_id.eq(workspace.as_str()))
        .select(messages::id)
        .first::<String>(conn)
        .optional()
        .map(|found| found.is_some())
}

pub fn insert_comment(conn: &mut DbConnection, comment: &CommentRow) -> QueryResult<()> {
    diesel::insert_into(comments::table)
        .values(comment)
        .execute(conn)
        .map(drop)
}

pub fn find_comment(
    conn: &mut DbConnection,
    workspace: &WorkspaceId,
    message_id: &MessageId,
    comment_id: &CommentId,
) -> QueryResult<Option<CommentRow>> {
    comments::table
        .find(comment_id.as_str())
        .filter(comments::message_id.eq(message_id.as_str()))
        .filter(comments::workspace_id.eq(workspace.as_str()))
        .select(CommentRow::as_select())
        .first(conn)
        .optional()
}

/// Up to `limit` comments of a message with ids after `after`, oldest first.
pub fn list_comments(
    conn: &mut DbConnection,
    workspace: &WorkspaceId,
    message_id: &MessageId,
    after: Option<&CommentId>,
    limit: i64,
) -> QueryResult<Vec<CommentRow>> {
    let mut query = comments::table
        .filter(comments::message_id.eq(message_id.as_str()))
        .filter(comments::workspace_id.eq(workspace.as_str()))
        .select(CommentRow::as_select())
        .order(comments::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(comments::id.gt(after.as_str()));
    }
    query.load(conn)
}
