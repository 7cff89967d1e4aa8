//! Repository functions for events.

use diesel::prelude::*;

use super::DbConnection;
use super::models::EventRow;
use super::schema::{events, feed_state, messages};

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

/// Gives the event the next feed position. Call as the last statement before
/// commit: the counter row stays locked until then, which is what hands out
/// positions in commit order (see the migration that made the feed).
pub fn assign_feed_position(conn: &mut DbConnection, event_id: &str) -> QueryResult<i64> {
    diesel::update(feed_state::table.find(1))
        .set(feed_state::last_position.eq(feed_state::last_position + 1))
        .execute(conn)?;
    let position: i64 = feed_state::table
        .find(1)
        .select(feed_state::last_position)
        .first(conn)?;
    diesel::update(events::table.find(event_id))
        .set(events::feed_position.eq(position))
        .execute(conn)?;
    Ok(position)
}

/// A page of the feed: events after `after`, oldest first, optionally
/// only of some types or one message.
pub fn feed(
    conn: &mut DbConnection,
    after: i64,
    types: &[&str],
    message_id: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    let mut query = events::table
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

/// Events up to this position have been pruned.
pub fn pruned_through(conn: &mut DbConnection) -> QueryResult<i64> {
    feed_state::table
        .find(1)
        .select(feed_state::pruned_through)
        .first(conn)
}

/// Removes events created before `before` with their deliveries and
/// attempts, at most `batch` at a time; returns how many were removed.
pub fn prune(
    conn: &mut DbConnection,
    before: time::PrimitiveDateTime,
    batch: i64,
) -> QueryResult<usize> {
    use super::schema::{deliveries, delivery_attempts};

    super::write_transaction(conn, |conn| {
        let doomed: Vec<(String, Option<i64>)> = events::table
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
        diesel::delete(deliveries::table.filter(deliveries::event_id.eq_any(&ids)))
            .execute(conn)?;
        diesel::delete(events::table.filter(events::id.eq_any(&ids))).execute(conn)?;
        if let Some(highest) = doomed.iter().filter_map(|(_, p)| *p).max() {
            diesel::update(
                feed_state::table
                    .find(1)
                    .filter(feed_state::pruned_through.lt(highest)),
            )
            .set(feed_state::pruned_through.eq(highest))
            .execute(conn)?;
        }
        Ok(doomed.len())
    })
}
