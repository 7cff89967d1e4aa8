//! Repository functions for deliveries and their attempts.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::models::{AttemptRow, DeliveryRow, EventRow, SubscriptionRow};
use super::schema::{deliveries, delivery_attempts, events, subscriptions};

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";
pub const STATUSES: [&str; 3] = [PENDING, DELIVERED, FAILED];

pub fn insert_all(conn: &mut DbConnection, rows: &[DeliveryRow]) -> QueryResult<()> {
    // One statement per row: a multi-row INSERT is not portable through
    // MultiConnection, and these run inside the event's transaction anyway.
    for row in rows {
        diesel::insert_into(deliveries::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

/// A claimed delivery with what is needed to attempt it.
pub type Claimed = (DeliveryRow, EventRow, SubscriptionRow);

pub fn load_claimed(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<Claimed>> {
    deliveries::table
        .inner_join(events::table)
        .inner_join(subscriptions::table)
        .filter(deliveries::id.eq_any(ids))
        .select((
            DeliveryRow::as_select(),
            EventRow::as_select(),
            SubscriptionRow::as_select(),
        ))
        .load(conn)
}

/// What one attempt changed.
#[derive(Debug)]
pub struct AttemptUpdate {
    pub status: &'static str,
    pub next_attempt_at: PrimitiveDateTime,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<PrimitiveDateTime>,
}

/// Records the attempt and its effect, and releases the lease.
pub fn record_attempt(
    conn: &mut DbConnection,
    attempt: &AttemptRow,
    update: &AttemptUpdate,
) -> QueryResult<()> {
    diesel::insert_into(delivery_attempts::table)
        .values(attempt)
        .execute(conn)?;
    diesel::update(deliveries::table.find(&attempt.delivery_id))
        .set((
            deliveries::status.eq(update.status),
            deliveries::attempts.eq(attempt.number),
            deliveries::next_attempt_at.eq(update.next_attempt_at),
            deliveries::last_status_code.eq(update.last_status_code),
            deliveries::last_error.eq(&update.last_error),
            deliveries::delivered_at.eq(update.delivered_at),
            deliveries::locked_until.eq(None::<PrimitiveDateTime>),
            deliveries::locked_by.eq(None::<String>),
        ))
        .execute(conn)
        .map(drop)
}

/// Gives up leases without an attempt (shutdown): due again at once.
pub fn release(conn: &mut DbConnection, ids: &[String], worker: &str) -> QueryResult<usize> {
    diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(ids))
            .filter(deliveries::locked_by.eq(worker)),
    )
    .set((
        deliveries::locked_until.eq(None::<PrimitiveDateTime>),
        deliveries::locked_by.eq(None::<String>),
    ))
    .execute(conn)
}

/// A delivery, if it belongs to a subscription of `owner`.
pub fn find_owned(
    conn: &mut DbConnection,
    id: &str,
    owner: &str,
) -> QueryResult<Option<(DeliveryRow, EventRow)>> {
    deliveries::table
        .inner_join(events::table)
        .inner_join(subscriptions::table)
        .filter(deliveries::id.eq(id))
        .filter(subscriptions::owner_client_id.eq(owner))
        .select((DeliveryRow::as_select(), EventRow::as_select()))
        .first(conn)
        .optional()
}

pub fn list_for_subscription(
    conn: &mut DbConnection,
    subscription_id: &str,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<(DeliveryRow, EventRow)>> {
    let mut query = deliveries::table
        .inner_join(events::table)
        .filter(deliveries::subscription_id.eq(subscription_id))
        .select((DeliveryRow::as_select(), EventRow::as_select()))
        .order(deliveries::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(deliveries::status.eq(status));
    }
    if let Some(after) = after {
        query = query.filter(deliveries::id.gt(after));
    }
    query.load(conn)
}

pub fn attempts_of(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<AttemptRow>> {
    delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(ids))
        .order((delivery_attempts::delivery_id, delivery_attempts::number))
        .select(AttemptRow::as_select())
        .load(conn)
}

/// Makes a delivery due now (pending again if it had failed).
pub fn retry_now(conn: &mut DbConnection, id: &str, now: PrimitiveDateTime) -> QueryResult<()> {
    diesel::update(deliveries::table.find(id))
        .set((
            deliveries::status.eq(PENDING),
            deliveries::next_attempt_at.eq(now),
        ))
        .execute(conn)
        .map(drop)
}

/// Records that `owner` fetched `resource_id`: every delivered, not yet
/// fetched delivery of an event about it, to a subscription of `owner`.
/// Reads first and writes only if there is something to mark, so the
/// usual fetch stays read-only.
pub fn mark_fetched(
    conn: &mut DbConnection,
    resource_id: &str,
    owner: &str,
    at: PrimitiveDateTime,
) -> QueryResult<usize> {
    let unfetched = |conn: &mut DbConnection| -> QueryResult<Vec<String>> {
        deliveries::table
            .inner_join(events::table)
            .inner_join(subscriptions::table)
            .filter(events::resource_id.eq(resource_id))
            .filter(subscriptions::owner_client_id.eq(owner))
            .filter(deliveries::status.eq(DELIVERED))
            .filter(deliveries::fetched_at.is_null())
            .select(deliveries::id)
            .load(conn)
    };
    let ids = unfetched(conn)?;
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::update(
        deliveries::table
            .filter(deliveries::id.eq_any(&ids))
            .filter(deliveries::fetched_at.is_null()),
    )
    .set(deliveries::fetched_at.eq(at))
    .execute(conn)
}
