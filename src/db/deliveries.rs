//! Repository functions for deliveries and their attempts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::fixed::{Bind, Fixed};
use super::models::{AttemptRow, DeliveryRow, EventRow, SubscriptionRow};
use super::schema::{deliveries, delivery_attempts, events, subscriptions};
use super::subscriptions::Owner;
use crate::domain::WorkspaceId;

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";
pub const STATUSES: [&str; 3] = [PENDING, DELIVERED, FAILED];

pub fn insert_all(conn: &mut DbConnection, rows: &[DeliveryRow]) -> QueryResult<()> {
    insert_many!(conn, deliveries::table, rows);
    Ok(())
}

pub fn insert_attempts(conn: &mut DbConnection, rows: &[AttemptRow]) -> QueryResult<()> {
    insert_many!(conn, delivery_attempts::table, rows);
    Ok(())
}

/// A delivery leased to this process, with what its attempt needs. Events
/// and subscriptions are shared by the deliveries of one batch.
#[derive(Debug, Clone)]
pub struct Leased {
    pub delivery_id: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub event: Arc<EventRow>,
    pub subscription: Arc<SubscriptionRow>,
    /// Delivered once already (a replay): its delay is not measured again.
    pub delivered_before: bool,
}

/// The deliveries `ids` with their events and subscriptions.
pub fn load_leased(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<Leased>> {
    let rows: Vec<(String, i32, bool, EventRow, SubscriptionRow)> = deliveries::table
        .inner_join(events::table)
        .inner_join(subscriptions::table)
        .filter(deliveries::id.eq_any(ids))
        .select((
            deliveries::id,
            deliveries::attempts,
            deliveries::delivered_at.is_not_null(),
            EventRow::as_select(),
            SubscriptionRow::as_select(),
        ))
        .load(conn)?;
    let mut events: HashMap<String, Arc<EventRow>> = HashMap::new();
    let mut subscriptions: HashMap<String, Arc<SubscriptionRow>> = HashMap::new();
    Ok(rows
        .into_iter()
        .map(
            |(delivery_id, attempts, delivered_before, event, subscription)| Leased {
                delivery_id,
                attempts,
                delivered_before,
                event: events
                    .entry(event.id.clone())
                    .or_insert_with(|| Arc::new(event))
                    .clone(),
                subscription: subscriptions
                    .entry(subscription.id.clone())
                    .or_insert_with(|| Arc::new(subscription))
                    .clone(),
            },
        )
        .collect())
}

/// What one attempt changed.
#[derive(Debug, Clone)]
pub struct AttemptUpdate {
    pub status: &'static str,
    pub next_attempt_at: PrimitiveDateTime,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<PrimitiveDateTime>,
}

/// What an attempt says about its subscription's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: the endpoint is healthy.
    Delivered,
    /// 410 Gone: disable the subscription.
    Gone,
    /// Anything else: the endpoint is failing.
    Failed,
}

/// One finished attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub subscription_id: String,
    /// When the answer (or the failure) came.
    pub finished_at: PrimitiveDateTime,
    pub attempt: AttemptRow,
    pub update: AttemptUpdate,
    pub verdict: Verdict,
    /// The attempt ran out of time (not stored: the dispatcher's breaker
    /// counts it).
    pub timed_out: bool,
}

impl AttemptOutcome {
    /// The same outcome without the text the receiver chose (its answer's
    /// excerpt, and an error that may quote it).
    pub fn without_text(&self) -> Self {
        const NOTE: &str = "the answer could not be stored";
        let mut plain = self.clone();
        plain.attempt.response_excerpt = None;
        plain.attempt.error = plain.attempt.error.as_ref().map(|_| NOTE.to_owned());
        plain.update.last_error = plain.update.last_error.as_ref().map(|_| NOTE.to_owned());
        plain
    }
}

/// Records finished attempts of `worker`: each attempt row, the delivery's
/// new state, the lease released, and what the attempts say about their
/// subscriptions. An outcome counts only while its delivery is still leased
/// to `worker`: one whose lease passed to another worker is discarded
/// (fencing).
pub fn record_outcomes(
    conn: &mut DbConnection,
    worker: &str,
    outcomes: &[AttemptOutcome],
    disable_after: Duration,
) -> QueryResult<Recorded> {
    let recorded = super::queue::record_fenced(conn, worker, outcomes)?;
    let kept: Vec<&AttemptOutcome> = outcomes
        .iter()
        .zip(&recorded)
        .filter_map(|(outcome, recorded)| recorded.then_some(outcome))
        .collect();
    let verdicts: Vec<(&str, Verdict, PrimitiveDateTime)> = kept
        .iter()
        .map(|o| (o.subscription_id.as_str(), o.verdict, o.finished_at))
        .collect();
    let disabled = super::subscriptions::apply_verdicts(conn, &verdicts, disable_after)?;
    Ok(Recorded {
        kept: recorded,
        disabled,
    })
}

/// What recording a batch of outcomes did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Per outcome, whether it was recorded (false: the lease had passed
    /// to another worker).
    pub kept: Vec<bool>,
    /// Subscriptions the outcomes disabled.
    pub disabled: usize,
}

/// A delivery, if it belongs to a subscription of `owner`.
pub fn find_owned(
    conn: &mut DbConnection,
    id: &str,
    owner: &Owner,
) -> QueryResult<Option<(DeliveryRow, EventRow)>> {
    find(conn, id, Some(owner))
}

/// A delivery with its event, whoever owns it unless `owner` is given
/// (the operator's command line sees every client's).
pub fn find(
    conn: &mut DbConnection,
    id: &str,
    owner: Option<&Owner>,
) -> QueryResult<Option<(DeliveryRow, EventRow)>> {
    let mut query = deliveries::table
        .inner_join(events::table)
        .inner_join(subscriptions::table)
        .filter(deliveries::id.eq(id))
        .select((DeliveryRow::as_select(), EventRow::as_select()))
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(owner.owns());
    }
    query.first(conn).optional()
}

/// Whose deliveries a list holds.
#[derive(Debug, Clone)]
pub enum DeliveriesOf {
    /// One subscription's, if `Owner` owns it.
    OwnedSubscription(Owner, String),
    /// Every subscription's of a client.
    Owner(Owner),
    /// One subscription's, whoever owns it: for the operator.
    Subscription(String),
    /// Every subscription's in a workspace: for the operator.
    Workspace(WorkspaceId),
    /// Everyone's: for the operator.
    All,
}

/// Deliveries with their events, oldest first: of `of`, optionally only
/// with `status`, created at or after `since`, after the delivery `after`.
pub fn list(
    conn: &mut DbConnection,
    of: &DeliveriesOf,
    status: Option<&str>,
    since: Option<PrimitiveDateTime>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<(DeliveryRow, EventRow)>> {
    let mut query = deliveries::table
        .inner_join(events::table)
        .inner_join(subscriptions::table)
        .select((DeliveryRow::as_select(), EventRow::as_select()))
        .order(deliveries::id.asc())
        .limit(limit)
        .into_boxed();
    query = match of {
        DeliveriesOf::OwnedSubscription(owner, id) => query
            .filter(deliveries::subscription_id.eq(id))
            .filter(owner.owns()),
        DeliveriesOf::Owner(owner) => query.filter(owner.owns()),
        DeliveriesOf::Subscription(id) => query.filter(deliveries::subscription_id.eq(id)),
        DeliveriesOf::Workspace(workspace) => {
            query.filter(subscriptions::workspace_id.eq(workspace.as_str()))
        }
        DeliveriesOf::All => query,
    };
    if let Some(status) = status {
        query = query.filter(deliveries::status.eq(status));
    }
    if let Some(since) = since {
        query = query.filter(deliveries::created_at.ge(since));
    }
    if let Some(after) = after {
        query = query.filter(deliveries::id.gt(after));
    }
    query.load(conn)
}

/// The ids of the deliveries of `owner`'s subscriptions, or of all when
/// `None` (the operator's), to narrow down and load.
fn delivery_ids(
    owner: Option<&Owner>,
) -> diesel::helper_types::IntoBoxed<
    '_,
    diesel::dsl::Select<
        diesel::dsl::InnerJoin<deliveries::table, subscriptions::table>,
        deliveries::id,
    >,
    super::MultiBackend,
> {
    let query = deliveries::table
        .inner_join(subscriptions::table)
        .select(deliveries::id)
        .into_boxed();
    match owner {
        Some(owner) => query.filter(owner.owns()),
        None => query,
    }
}

/// Makes the deliveries `ids` due now, pending again.
fn requeue(conn: &mut DbConnection, ids: &[String], now: PrimitiveDateTime) -> QueryResult<usize> {
    diesel::update(deliveries::table.filter(deliveries::id.eq_any(ids)))
        .set((
            deliveries::status.eq(PENDING),
            deliveries::next_attempt_at.eq(now),
        ))
        .execute(conn)
}

/// How many deliveries of one status were created in one hour.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct HourlyCount {
    /// Hours since the Unix epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub hour: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub count: i64,
}

/// `owner`'s deliveries created since `since`, counted per hour and
/// status, oldest hour first: the figures of a chart, without loading a row
/// per delivery.
pub fn hourly_counts(
    conn: &mut DbConnection,
    owner: &Owner,
    since: PrimitiveDateTime,
) -> QueryResult<Vec<HourlyCount>> {
    // The hour of a timestamp is the one expression the backends write apart.
    let sql = match conn {
        DbConnection::Sqlite(_) => {
            "SELECT CAST(strftime('%s', d.created_at) AS INTEGER) / 3600 AS hour, \
             d.status AS status, COUNT(*) AS count \
             FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id \
             WHERE s.workspace_id = ? AND s.owner_client_id = ? AND d.created_at >= ? \
             GROUP BY 1, 2 ORDER BY 1, 2"
        }
        DbConnection::Postgres(_) => {
            "SELECT CAST(floor(extract(epoch FROM d.created_at) / 3600) AS BIGINT) AS hour, \
             d.status AS status, COUNT(*) AS count \
             FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id \
             WHERE s.workspace_id = ? AND s.owner_client_id = ? AND d.created_at >= ? \
             GROUP BY 1, 2 ORDER BY 1, 2"
        }
    };
    Fixed::new(
        sql,
        [
            Bind::Text(owner.workspace.as_str()),
            Bind::Text(owner.client.as_str()),
            Bind::Timestamp(since),
        ],
    )
    .load(conn)
}

/// Deliveries one replay queues at most; call again for the rest.
pub const REPLAY_LIMIT: i64 = 1000;

/// Makes due now, at most [`REPLAY_LIMIT`], the finished deliveries of
/// `subscription` (if `owner` owns it, when given) created since `since`
/// whose status is one of `statuses` (never pending: those are queued
/// already, so replaying twice queues nothing twice). Returns how many,
/// oldest first.
pub fn replay(
    conn: &mut DbConnection,
    subscription: &str,
    owner: Option<&Owner>,
    statuses: &[&str],
    since: PrimitiveDateTime,
    now: PrimitiveDateTime,
) -> QueryResult<usize> {
    let chosen: Vec<String> = delivery_ids(owner)
        .filter(deliveries::subscription_id.eq(subscription))
        .filter(deliveries::status.eq_any(statuses))
        .filter(deliveries::status.ne(PENDING))
        .filter(deliveries::created_at.ge(since))
        .order(deliveries::id.asc())
        .limit(REPLAY_LIMIT)
        .load(conn)?;
    requeue(conn, &chosen, now)
}

pub fn attempts_of(conn: &mut DbConnection, ids: &[String]) -> QueryResult<Vec<AttemptRow>> {
    delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(ids))
        .order((delivery_attempts::delivery_id, delivery_attempts::number))
        .select(AttemptRow::as_select())
        .load(conn)
}

/// When each of the deliveries `ids` that has an attempt was last attempted.
pub fn last_attempted(
    conn: &mut DbConnection,
    ids: &[String],
) -> QueryResult<Vec<(String, Option<PrimitiveDateTime>)>> {
    delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(ids))
        .group_by(delivery_attempts::delivery_id)
        .select((
            delivery_attempts::delivery_id,
            diesel::dsl::max(delivery_attempts::started_at),
        ))
        .load(conn)
}

/// Makes a delivery due now (pending again if it had failed), if it is of
/// a subscription of `owner` when given; returns whether it was.
pub fn retry_now(
    conn: &mut DbConnection,
    id: &str,
    owner: Option<&Owner>,
    now: PrimitiveDateTime,
) -> QueryResult<bool> {
    let chosen: Vec<String> = delivery_ids(owner)
        .filter(deliveries::id.eq(id))
        .load(conn)?;
    Ok(requeue(conn, &chosen, now)? == 1)
}

/// A fetch of a resource by a client, to record on its deliveries.
#[derive(Debug, Clone)]
pub struct FetchMark {
    pub resource_id: String,
    pub owner: String,
    pub at: PrimitiveDateTime,
}

/// Sets each delivery's `fetched_at` unless it is set already. Fetch times
/// rarely repeat, so on PostgreSQL, where each statement is a round trip,
/// one statement sets them all.
fn set_fetched_at(
    conn: &mut DbConnection,
    fetched: &[(&str, PrimitiveDateTime)],
) -> QueryResult<usize> {
    if fetched.is_empty() {
        return Ok(0);
    }
    if let DbConnection::Postgres(conn) = conn {
        use diesel::sql_types::{Array, Text, Timestamp};
        let (ids, times): (Vec<&str>, Vec<PrimitiveDateTime>) = fetched.iter().copied().unzip();
        return diesel::sql_query(
            "UPDATE deliveries AS d SET fetched_at = m.at \
             FROM unnest($1::text[], $2::timestamp[]) AS m(id, at) \
             WHERE d.id = m.id AND d.fetched_at IS NULL",
        )
        .bind::<Array<Text>, _>(ids)
        .bind::<Array<Timestamp>, _>(times)
        .execute(conn);
    }
    let mut by_time: BTreeMap<PrimitiveDateTime, Vec<&str>> = BTreeMap::new();
    for &(id, at) in fetched {
        by_time.entry(at).or_default().push(id);
    }
    let mut marked = 0;
    for (at, ids) in by_time {
        marked += diesel::update(
            deliveries::table
                .filter(deliveries::id.eq_any(&ids))
                .filter(deliveries::fetched_at.is_null()),
        )
        .set(deliveries::fetched_at.eq(at))
        .execute(conn)?;
    }
    Ok(marked)
}

/// Records fetches: every not yet fetched delivery of an event about the
/// resource, to a subscription of the fetching client, gets `fetched_at`.
/// Whatever the delivery's state: receivers usually fetch *before* they
/// answer the webhook, so the fetch arrives while the attempt that announced
/// it is still being recorded.
///
/// Each step reads one table by one index (resource → events → their
/// deliveries → those deliveries' subscriptions), so the cost follows the
/// fetched resource, never a subscription's whole history.
pub fn mark_fetched_all(conn: &mut DbConnection, marks: &[FetchMark]) -> QueryResult<usize> {
    let resources: BTreeSet<&str> = marks.iter().map(|m| m.resource_id.as_str()).collect();
    let resources: Vec<&str> = resources.into_iter().collect();
    let events: HashMap<String, String> = events::table
        .filter(events::resource_id.eq_any(&resources))
        .select((events::id, events::resource_id))
        .load::<(String, String)>(conn)?
        .into_iter()
        .collect();
    if events.is_empty() {
        return Ok(0);
    }
    let event_ids: Vec<&String> = events.keys().collect();
    let unfetched: Vec<(String, String, String)> = deliveries::table
        .filter(deliveries::event_id.eq_any(&event_ids))
        .filter(deliveries::fetched_at.is_null())
        .select((
            deliveries::id,
            deliveries::event_id,
            deliveries::subscription_id,
        ))
        .load(conn)?;
    if unfetched.is_empty() {
        return Ok(0);
    }
    let subscription_ids: BTreeSet<&str> = unfetched.iter().map(|(_, _, s)| s.as_str()).collect();
    let subscription_ids: Vec<&str> = subscription_ids.into_iter().collect();
    let owners: HashMap<String, String> = subscriptions::table
        .filter(subscriptions::id.eq_any(&subscription_ids))
        .select((subscriptions::id, subscriptions::owner_client_id))
        .load::<(String, String)>(conn)?
        .into_iter()
        .collect();
    // The first fetch of each (resource, client) in the batch counts.
    let mut first: HashMap<(&str, &str), PrimitiveDateTime> = HashMap::new();
    for mark in marks {
        first
            .entry((&mark.resource_id, &mark.owner))
            .and_modify(|at| *at = (*at).min(mark.at))
            .or_insert(mark.at);
    }
    let mut fetched: Vec<(&str, PrimitiveDateTime)> = Vec::new();
    for (delivery, event, subscription) in &unfetched {
        let (Some(resource), Some(owner)) = (events.get(event), owners.get(subscription)) else {
            continue;
        };
        if let Some(at) = first.get(&(resource.as_str(), owner.as_str())) {
            fetched.push((delivery, *at));
        }
    }
    set_fetched_at(conn, &fetched)
}
