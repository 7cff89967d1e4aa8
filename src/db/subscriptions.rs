//! Repository functions for webhook subscriptions. Reads and writes on
//! behalf of a client are scoped to its own subscriptions.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::models::SubscriptionRow;
use super::schema::subscriptions;
use crate::domain::{EventType, EventTypes};

pub fn insert(conn: &mut DbConnection, row: &SubscriptionRow) -> QueryResult<()> {
    diesel::insert_into(subscriptions::table)
        .values(row)
        .execute(conn)
        .map(drop)
}

pub fn find_owned(
    conn: &mut DbConnection,
    id: &str,
    owner: &str,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .filter(subscriptions::owner_client_id.eq(owner))
        .select(SubscriptionRow::as_select())
        .first(conn)
        .optional()
}

pub fn list_owned(
    conn: &mut DbConnection,
    owner: &str,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<SubscriptionRow>> {
    let mut query = subscriptions::table
        .filter(subscriptions::owner_client_id.eq(owner))
        .select(SubscriptionRow::as_select())
        .order(subscriptions::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(subscriptions::id.gt(after));
    }
    query.load(conn)
}

/// Writes every column of `row` (looked up by its id).
pub fn update(conn: &mut DbConnection, row: &SubscriptionRow) -> QueryResult<()> {
    diesel::update(subscriptions::table.find(&row.id))
        .set(row)
        .execute(conn)
        .map(drop)
}

pub fn delete_owned(conn: &mut DbConnection, id: &str, owner: &str) -> QueryResult<bool> {
    diesel::delete(
        subscriptions::table
            .find(id)
            .filter(subscriptions::owner_client_id.eq(owner)),
    )
    .execute(conn)
    .map(|deleted| deleted == 1)
}

/// Ids of the enabled subscriptions that want `event_type` on `message_id`.
pub fn matching(
    conn: &mut DbConnection,
    event_type: EventType,
    message_id: &str,
) -> QueryResult<Vec<String>> {
    subscriptions::table
        .filter(subscriptions::enabled.eq(1))
        .filter(subscriptions::event_types.like(EventTypes::stored_pattern(event_type)))
        .filter(
            subscriptions::message_id
                .is_null()
                .or(subscriptions::message_id.eq(message_id)),
        )
        .select(subscriptions::id)
        .order(subscriptions::id.asc())
        .load(conn)
}

/// After a success: the subscription is healthy again.
pub fn record_success(conn: &mut DbConnection, id: &str) -> QueryResult<()> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::failing_since.is_not_null()),
    )
    .set(subscriptions::failing_since.eq(None::<PrimitiveDateTime>))
    .execute(conn)
    .map(drop)
}

/// After a failure: starts the failing period if none is running; returns
/// when it started.
pub fn record_failure(
    conn: &mut DbConnection,
    id: &str,
    at: PrimitiveDateTime,
) -> QueryResult<Option<PrimitiveDateTime>> {
    diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::failing_since.is_null()),
    )
    .set(subscriptions::failing_since.eq(at))
    .execute(conn)?;
    subscriptions::table
        .find(id)
        .select(subscriptions::failing_since)
        .first(conn)
        .optional()
        .map(Option::flatten)
}

pub fn disable(
    conn: &mut DbConnection,
    id: &str,
    reason: &str,
    at: PrimitiveDateTime,
) -> QueryResult<()> {
    diesel::update(subscriptions::table.find(id))
        .set((
            subscriptions::enabled.eq(0),
            subscriptions::disabled_reason.eq(reason),
            subscriptions::updated_at.eq(at),
        ))
        .execute(conn)
        .map(drop)
}
