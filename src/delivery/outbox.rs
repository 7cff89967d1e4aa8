//! The transactional outbox: an event and its deliveries are written in the
//! transaction that changes the resource, so nothing accepted is lost
//! between "comment saved" and "webhook queued".

use diesel::QueryResult;
use time::PrimitiveDateTime;

use crate::db::models::{DeliveryRow, EventRow};
use crate::db::{DbConnection, deliveries, events, queue, subscriptions};
use crate::domain::{DeliveryId, EventId, EventType};

/// What happened, to which resource.
#[derive(Debug)]
pub struct NewEvent<'a> {
    pub event_type: EventType,
    pub resource_type: &'static str,
    pub resource_id: &'a str,
    /// Path of the resource under the public base URL.
    pub resource_path: String,
    pub message_id: &'a str,
}

/// Records the event and one delivery per matching subscription. Call inside
/// the caller's transaction; returns the event and how many were queued.
pub fn record(
    conn: &mut DbConnection,
    new: NewEvent<'_>,
    now: PrimitiveDateTime,
) -> QueryResult<(EventRow, usize)> {
    let event = EventRow {
        id: EventId::generate().to_string(),
        event_type: new.event_type.as_str().to_owned(),
        resource_type: new.resource_type.to_owned(),
        resource_id: new.resource_id.to_owned(),
        resource_path: new.resource_path,
        message_id: new.message_id.to_owned(),
        sequence: events::next_sequence(conn, new.message_id)?,
        created_at: now,
        feed_position: None,
    };
    events::insert(conn, &event)?;
    let rows: Vec<DeliveryRow> = subscriptions::matching(conn, new.event_type, new.message_id)?
        .into_iter()
        .map(|subscription_id| DeliveryRow {
            id: DeliveryId::generate().to_string(),
            event_id: event.id.clone(),
            subscription_id,
            status: deliveries::PENDING.to_owned(),
            attempts: 0,
            next_attempt_at: now,
            locked_until: None,
            locked_by: None,
            last_status_code: None,
            last_error: None,
            delivered_at: None,
            fetched_at: None,
            created_at: now,
        })
        .collect();
    deliveries::insert_all(conn, &rows)?;
    if !rows.is_empty() {
        queue::announce(conn)?;
    }
    // Last: the feed counter stays locked from here to commit.
    let position = events::assign_feed_position(conn, &event.id)?;
    Ok((
        EventRow {
            feed_position: Some(position),
            ..event
        },
        rows.len(),
    ))
}
