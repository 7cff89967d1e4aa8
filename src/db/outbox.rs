//! The transactional outbox: a new resource, its event and one delivery per
//! matching subscription are written in one transaction, so nothing accepted
//! is lost between "comment saved" and "webhook queued".
//!
//! The writer publishes everything waiting in one go: each table gets one
//! multi-row `INSERT`, each message's sequence counter one update, and the
//! feed counter one update for the whole batch — taken last, so that it is
//! held only from there to commit (positions are handed out in commit order;
//! see the migration that made the feed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::deliveries::{self, Leased};
use super::fixed::{Bind, Fixed};
use super::models::{CommentRow, DeliveryRow, EventRow, MessageRow, SubscriptionRow};
use super::schema::{comments, events, messages};
use super::{DbConnection, idempotency, queue, subscriptions};
use crate::domain::{DeliveryId, EventId, EventType};

/// A resource to create, and where it will be found.
#[derive(Debug, Clone)]
pub struct Publication {
    pub resource: Resource,
    /// Path of the resource under the public base URL.
    pub resource_path: String,
    /// The trace of the request that created it, passed on to its webhooks.
    pub traceparent: Option<String>,
    /// The response to store under the request's `Idempotency-Key`, with
    /// the resource: only if the resource is written.
    pub idempotency: Option<idempotency::Record>,
}

#[derive(Debug, Clone)]
pub enum Resource {
    /// A message, with the subscription its `newCommentWebhook` asked for.
    Message {
        row: MessageRow,
        subscription: Option<Box<SubscriptionRow>>,
    },
    Comment(CommentRow),
}

impl Resource {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Message { .. } => EventType::MessageCreated,
            Self::Comment(_) => EventType::CommentCreated,
        }
    }

    /// `(type, id)` of the resource.
    fn identity(&self) -> (&'static str, &str) {
        match self {
            Self::Message { row, .. } => ("message", &row.id),
            Self::Comment(row) => ("comment", &row.id),
        }
    }

    /// The workspace it is written in, and its message, in that workspace.
    fn message_in(&self) -> (&str, &str) {
        match self {
            Self::Message { row, .. } => (&row.workspace_id, &row.id),
            Self::Comment(row) => (&row.workspace_id, &row.message_id),
        }
    }

    fn created_at(&self) -> PrimitiveDateTime {
        match self {
            Self::Message { row, .. } => row.created_at,
            Self::Comment(row) => row.created_at,
        }
    }
}

/// What publishing recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    /// Deliveries queued for the event.
    pub queued: usize,
}

/// Lease the new deliveries to this worker, as far as the bounds allow.
#[derive(Debug)]
pub struct LeaseTo<'a> {
    pub worker: &'a str,
    pub now: PrimitiveDateTime,
    pub until: PrimitiveDateTime,
    /// Deliveries the worker can still take in.
    pub capacity: usize,
    /// Live leases a subscription may have when this worker is not its only holder.
    pub per_subscription: i64,
}

/// Writes `items` with their events and deliveries. Per item: what was
/// published, or `None` for a comment on a message that does not exist
/// (nothing is written for it). Also returns the deliveries leased per `lease`.
pub fn publish_all(
    conn: &mut DbConnection,
    items: &[Publication],
    lease: Option<&LeaseTo<'_>>,
) -> QueryResult<(Vec<Option<Published>>, Vec<Leased>)> {
    let new_messages: Vec<MessageRow> = items
        .iter()
        .filter_map(|item| match &item.resource {
            Resource::Message { row, .. } => Some(row.clone()),
            Resource::Comment(_) => None,
        })
        .collect();
    insert_many!(&mut *conn, messages::table, &new_messages);
    for item in items {
        if let Resource::Message {
            subscription: Some(subscription),
            ..
        } = &item.resource
        {
            subscriptions::insert(conn, subscription)?;
        }
    }

    // Taking the sequence numbers also tells which messages exist.
    let mut sequences = next_sequences(conn, items)?;
    let accepted: Vec<&Publication> = items
        .iter()
        .filter(|item| sequences.contains_key(&item.resource.message_in()))
        .collect();
    let new_comments: Vec<CommentRow> = accepted
        .iter()
        .filter_map(|item| match &item.resource {
            Resource::Comment(row) => Some(row.clone()),
            Resource::Message { .. } => None,
        })
        .collect();
    insert_many!(&mut *conn, comments::table, &new_comments);
    // Before the feed counter: on PostgreSQL a key another process is
    // storing makes this wait for its commit, which must not hold the counter.
    idempotency::store_all(
        conn,
        accepted.iter().filter_map(|item| item.idempotency.as_ref()),
    )?;

    let mut event_rows: Vec<EventRow> = accepted
        .iter()
        .map(|item| {
            let (resource_type, resource_id) = item.resource.identity();
            let (workspace, message_id) = item.resource.message_in();
            let sequence = sequences
                .get_mut(&(workspace, message_id))
                .map_or(0, |next| {
                    *next += 1;
                    *next - 1
                });
            EventRow {
                id: EventId::generate().to_string(),
                event_type: item.resource.event_type().as_str().to_owned(),
                resource_type: resource_type.to_owned(),
                resource_id: resource_id.to_owned(),
                resource_path: item.resource_path.clone(),
                message_id: message_id.to_owned(),
                sequence,
                created_at: item.resource.created_at(),
                feed_position: None,
                traceparent: item.traceparent.clone(),
                workspace_id: workspace.to_owned(),
            }
        })
        .collect();

    let targets = matching(conn, &accepted)?;
    let mut leases = Leases::plan(conn, lease, &targets)?;

    // Last: the feed counter stays locked from here to commit.
    if !event_rows.is_empty() {
        let count = i64::try_from(event_rows.len()).unwrap_or(i64::MAX);
        let last = Fixed::new(
            "UPDATE feed_state SET last_position = last_position + ? WHERE id = 1
             RETURNING last_position AS value",
            [Bind::BigInt(count)],
        )
        .load::<Counter>(conn)?
        .pop()
        .ok_or(diesel::result::Error::NotFound)?
        .value;
        for (position, event) in (last - count + 1..).zip(&mut event_rows) {
            event.feed_position = Some(position);
        }
    }
    insert_many!(&mut *conn, events::table, &event_rows);

    let mut delivery_rows = Vec::new();
    let mut leased = Vec::new();
    let mut published: HashMap<&str, Published> = HashMap::new();
    for ((item, event), subscriptions) in accepted.iter().zip(event_rows).zip(&targets) {
        let event = Arc::new(event);
        for subscription in subscriptions {
            let id = DeliveryId::generate().to_string();
            // Held (not leased) while the receiver's consent is awaited.
            let lease_until = subscription
                .is_deliverable()
                .then(|| leases.take(&subscription.id))
                .flatten();
            if lease_until.is_some() {
                leased.push(Leased {
                    delivery_id: id.clone(),
                    attempts: 0,
                    delivered_before: false,
                    event: event.clone(),
                    subscription: subscription.clone(),
                });
            }
            delivery_rows.push(DeliveryRow {
                id,
                event_id: event.id.clone(),
                subscription_id: subscription.id.clone(),
                status: deliveries::PENDING.to_owned(),
                attempts: 0,
                next_attempt_at: event.created_at,
                locked_until: lease_until,
                locked_by: lease_until.and(lease.map(|l| l.worker.to_owned())),
                last_status_code: None,
                last_error: None,
                delivered_at: None,
                fetched_at: None,
                created_at: event.created_at,
            });
        }
        published.insert(
            item.resource.identity().1,
            Published {
                event_id: event.id.clone(),
                queued: subscriptions.len(),
            },
        );
    }
    deliveries::insert_all(conn, &delivery_rows)?;
    if delivery_rows.len() > leased.len() {
        // Not all are this process's: wake the dispatchers of the others.
        queue::announce(conn)?;
    }
    let results = items
        .iter()
        .map(|item| published.remove(item.resource.identity().1))
        .collect();
    Ok((results, leased))
}

/// Takes the next sequence numbers of the messages the items are about;
/// per `(workspace, message)` that exists, the first number its new events
/// get (a comment on another workspace's message finds none). Updating the
/// message row locks it, so concurrent writers get distinct, gap-free
/// numbers; messages are updated in id order, so two writers never wait on
/// each other in turn.
fn next_sequences<'a>(
    conn: &mut DbConnection,
    items: &'a [Publication],
) -> QueryResult<HashMap<(&'a str, &'a str), i64>> {
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for item in items {
        let (workspace, message) = item.resource.message_in();
        *counts.entry((message, workspace)).or_default() += 1;
    }
    let mut first = HashMap::with_capacity(counts.len());
    for ((message_id, workspace), count) in counts {
        let last = Fixed::new(
            "UPDATE messages SET last_sequence = last_sequence + ? WHERE id = ? AND workspace_id = ?
             RETURNING last_sequence AS value",
            [
                Bind::BigInt(count),
                Bind::Text(message_id),
                Bind::Text(workspace),
            ],
        )
        .load::<Counter>(conn)?
        .pop();
        if let Some(last) = last {
            first.insert((workspace, message_id), last.value - count + 1);
        }
    }
    Ok(first)
}

/// A counter's new value.
#[derive(QueryableByName)]
struct Counter {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    value: i64,
}

/// Per item, the subscriptions its event goes to (of its own workspace
/// only), in id order; one query per event type and message (usually one),
/// each row shared.
fn matching(
    conn: &mut DbConnection,
    items: &[&Publication],
) -> QueryResult<Vec<Vec<Arc<SubscriptionRow>>>> {
    /// An event type on a message of a workspace: `(type, (workspace, message))`.
    type Key<'a> = (EventType, (&'a str, &'a str));
    let keys: BTreeSet<Key<'_>> = items
        .iter()
        .map(|item| (item.resource.event_type(), item.resource.message_in()))
        .collect();
    let mut shared: HashMap<String, Arc<SubscriptionRow>> = HashMap::new();
    let mut by_key: HashMap<Key<'_>, Vec<Arc<SubscriptionRow>>> = HashMap::new();
    for (event_type, (workspace, message_id)) in keys {
        let rows = subscriptions::matching(conn, workspace, event_type, message_id)?
            .into_iter()
            .map(|row| {
                shared
                    .entry(row.id.clone())
                    .or_insert_with(|| Arc::new(row))
                    .clone()
            })
            .collect();
        by_key.insert((event_type, (workspace, message_id)), rows);
    }
    Ok(items
        .iter()
        .map(|item| by_key[&(item.resource.event_type(), item.resource.message_in())].clone())
        .collect())
}

/// Which new deliveries are leased to this process at creation.
struct Leases {
    until: Option<PrimitiveDateTime>,
    /// Deliveries the process can still take in.
    capacity: usize,
    /// Per subscription, how many more may be leased; absent: no limit but capacity.
    room: HashMap<String, i64>,
}

impl Leases {
    /// A worker that is a subscription's only holder takes all its new
    /// deliveries (it runs at most the bound at once); otherwise it takes
    /// them up to the subscription's bound on live leases, like a claim.
    fn plan(
        conn: &mut DbConnection,
        lease: Option<&LeaseTo<'_>>,
        targets: &[Vec<Arc<SubscriptionRow>>],
    ) -> QueryResult<Self> {
        let Some(lease) = lease.filter(|l| l.capacity > 0) else {
            return Ok(Self {
                until: None,
                capacity: 0,
                room: HashMap::new(),
            });
        };
        let ids: BTreeSet<&str> = targets.iter().flatten().map(|s| s.id.as_str()).collect();
        let ids: Vec<&str> = ids.into_iter().collect();
        let counts = queue::lease_counts(conn, &ids, lease.worker, lease.now)?;
        let room = counts
            .into_iter()
            .filter(|(_, (_, others))| *others > 0)
            .map(|(id, (mine, others))| (id, (lease.per_subscription - mine - others).max(0)))
            .collect();
        Ok(Self {
            until: Some(lease.until),
            capacity: lease.capacity,
            room,
        })
    }

    /// The lease end for the next delivery to `subscription`, if leased.
    fn take(&mut self, subscription: &str) -> Option<PrimitiveDateTime> {
        let until = self.until.filter(|_| self.capacity > 0)?;
        if let Some(room) = self.room.get_mut(subscription) {
            if *room == 0 {
                return None;
            }
            *room -= 1;
        }
        self.capacity -= 1;
        Some(until)
    }
}
