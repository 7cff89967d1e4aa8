//! Repository functions for events.

use diesel::prelude::*;

use super::DbConnection;
use super::models::EventRow;
use super::schema::{events, messages};

pub fn insert(conn: &mut DbConnection, event: &EventRow) -> QueryResult<()> {
    diesel::insert_into(events::table)
        .values(event)
        .execute(conn)
        .map(drop)
}

/// Takes the next sequence number of a message's events. The update locks
/// the message row, so concurrent events on one message get distinct,
/// gap-free numbers in commit order.
pub fn next_sequence(conn: &mut DbConnection, message_id: &str) -> QueryResult<i64> {
    diesel::update(messages::table.find(message_id))
        .set(messages::last_sequence.eq(messages::last_sequence + 1))
        .execute(conn)?;
    messages::table
        .find(message_id)
        .select(messages::last_sequence)
        .first(conn)
}

pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<EventRow>> {
    events::table
        .find(id)
        .select(EventRow::as_select())
        .first(conn)
        .optional()
}
