//! Repository functions for webhook subscriptions. Reads and writes on
//! behalf of a client are scoped to its own subscriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::deliveries::Verdict;
use super::fixed::{Bind, Fixed};
use super::models::{Format, SubscriptionRow, Verification};
use super::schema::subscriptions;
use crate::domain::{ClientId, EventType, EventTypes, WorkspaceId};

/// A client acting on its own subscriptions: every query on its behalf
/// filters on its workspace and on it, in the statement itself, so another
/// workspace's subscription is as absent as a missing id.
#[derive(Debug, Clone)]
pub struct Owner {
    pub workspace: WorkspaceId,
    pub client: ClientId,
}

/// The condition a subscription row of `Owner` meets.
pub type Owns<'a> = diesel::dsl::And<
    diesel::dsl::Eq<subscriptions::workspace_id, &'a str>,
    diesel::dsl::Eq<subscriptions::owner_client_id, &'a str>,
>;

impl Owner {
    /// Its subscriptions: its workspace's, and its own there.
    pub fn owns(&self) -> Owns<'_> {
        subscriptions::workspace_id
            .eq(self.workspace.as_str())
            .and(subscriptions::owner_client_id.eq(self.client.as_str()))
    }
}

pub fn insert(conn: &mut DbConnection, row: &SubscriptionRow) -> QueryResult<()> {
    diesel::insert_into(subscriptions::table)
        .values(row)
        .execute(conn)
        .map(drop)
}

/// How many subscriptions there may be.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Per client.
    pub per_client: u32,
    /// Per workspace, unless the workspace sets its own.
    pub per_workspace: u32,
    /// Matching one event: unfiltered subscriptions plus those of the
    /// event's message.
    pub per_event: u32,
}

/// Why `owner` may not add a subscription (to `message_id`, or unfiltered
/// when `None`), if it may not. Counts every subscription, enabled or not,
/// so that enabling one never passes a quota.
pub fn quota_refusal(
    conn: &mut DbConnection,
    owner: &Owner,
    message_id: Option<&str>,
    quota: Quota,
) -> QueryResult<Option<String>> {
    let workspace = &owner.workspace;
    let owned: i64 = subscriptions::table
        .filter(owner.owns())
        .count()
        .get_result(conn)?;
    if owned >= i64::from(quota.per_client) {
        return Ok(Some(format!(
            "a client may have at most {} subscriptions; delete one first",
            quota.per_client
        )));
    }
    let in_workspace: i64 = subscriptions::table
        .filter(subscriptions::workspace_id.eq(workspace.as_str()))
        .count()
        .get_result(conn)?;
    let per_workspace = super::workspaces::find(conn, workspace.as_str())?
        .and_then(|own| own.max_subscriptions)
        .map_or(i64::from(quota.per_workspace), i64::from);
    if in_workspace >= per_workspace {
        return Ok(Some(format!(
            "the clients of a workspace may have at most {per_workspace} subscriptions together; delete one first"
        )));
    }
    // Events match only subscriptions of their own workspace.
    let unfiltered: i64 = subscriptions::table
        .filter(subscriptions::workspace_id.eq(workspace.as_str()))
        .filter(subscriptions::message_id.is_null())
        .count()
        .get_result(conn)?;
    // The busiest event the new subscription would match.
    let filtered: i64 = match message_id {
        Some(message_id) => subscriptions::table
            .filter(subscriptions::message_id.eq(message_id))
            .filter(subscriptions::workspace_id.eq(workspace.as_str()))
            .count()
            .get_result(conn)?,
        None => subscriptions::table
            .filter(subscriptions::workspace_id.eq(workspace.as_str()))
            .filter(subscriptions::message_id.is_not_null())
            .group_by(subscriptions::message_id)
            .select(diesel::dsl::count_star())
            .order(diesel::dsl::count_star().desc())
            .first(conn)
            .optional()?
            .unwrap_or(0),
    };
    if unfiltered + filtered >= i64::from(quota.per_event) {
        return Ok(Some(format!(
            "an event may match at most {} subscriptions, and this one would pass that",
            quota.per_event
        )));
    }
    Ok(None)
}

/// A subscription, whoever owns it (the operator's command line).
pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .first(conn)
        .optional()
}

pub fn find_owned(
    conn: &mut DbConnection,
    id: &str,
    owner: &Owner,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .filter(owner.owns())
        .select(SubscriptionRow::as_select())
        .first(conn)
        .optional()
}

pub fn list_owned(
    conn: &mut DbConnection,
    owner: &Owner,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<SubscriptionRow>> {
    let mut query = subscriptions::table
        .filter(owner.owns())
        .select(SubscriptionRow::as_select())
        .order(subscriptions::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(subscriptions::id.gt(after));
    }
    query.load(conn)
}

/// What a `PATCH` asks to change; `None`: leave as it is.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub url: Option<String>,
    pub event_types: Option<String>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub signature_scheme: Option<String>,
    pub format: Option<Format>,
}

/// The columns a patch writes; the others keep whatever they hold when the
/// update runs, so a concurrent change to them (the dispatcher disabling
/// the subscription, or starting its failing period) is never overwritten
/// by an older copy of the row.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = subscriptions)]
struct Changes {
    url: Option<String>,
    event_types: Option<String>,
    description: Option<Option<String>>,
    enabled: Option<i32>,
    disabled_reason: Option<Option<String>>,
    failing_since: Option<Option<PrimitiveDateTime>>,
    signature_scheme: Option<String>,
    format: Option<String>,
    updated_at: PrimitiveDateTime,
}

/// A subscription's handshake state, written together.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = subscriptions, treat_none_as_null = true)]
pub struct VerificationColumns {
    pub verification: String,
    pub verification_due_at: Option<PrimitiveDateTime>,
    pub verification_attempts: i32,
    pub verification_error: Option<String>,
    pub verified_at: Option<PrimitiveDateTime>,
    pub allowed_rate: Option<i32>,
}

impl VerificationColumns {
    /// Where a subscription of `format` starts: pending ones are asked at once.
    pub fn initial(format: Format, now: PrimitiveDateTime) -> Self {
        let state = format.initial_verification();
        Self {
            verification: state.as_str().to_owned(),
            verification_due_at: (state == Verification::Pending).then_some(now),
            verification_attempts: 0,
            verification_error: None,
            verified_at: None,
            allowed_rate: None,
        }
    }
}

/// Applies `patch` to `owner`'s subscription `id`; the row as stored after,
/// or `None` if it has no such subscription.
pub fn patch_owned(
    conn: &mut DbConnection,
    id: &str,
    owner: &Owner,
    patch: &Patch,
    now: PrimitiveDateTime,
) -> QueryResult<Option<SubscriptionRow>> {
    match plan_patch(conn, id, owner, patch, now)? {
        Some(planned) => apply_patch(conn, &planned),
        None => Ok(None),
    }
}

/// A patch read and decided, to be written by [`apply_patch`].
#[derive(Debug)]
pub struct PlannedPatch {
    id: String,
    owner: Owner,
    changes: Changes,
    /// The handshake state starts afresh.
    verification: Option<VerificationColumns>,
}

impl PlannedPatch {
    /// Whether the patch starts a handshake.
    pub fn asks_consent(&self) -> bool {
        self.verification
            .as_ref()
            .is_some_and(|v| v.verification == Verification::Pending.as_str())
    }
}

/// Reads the subscription and decides what `patch` writes; `None` if
/// `owner` has no subscription `id`.
pub fn plan_patch(
    conn: &mut DbConnection,
    id: &str,
    owner: &Owner,
    patch: &Patch,
    now: PrimitiveDateTime,
) -> QueryResult<Option<PlannedPatch>> {
    let Some(current) = find_owned(conn, id, owner)? else {
        return Ok(None);
    };
    let mut changes = Changes {
        url: patch.url.clone(),
        event_types: patch.event_types.clone(),
        description: patch.description.clone(),
        enabled: None,
        disabled_reason: None,
        failing_since: None,
        signature_scheme: patch.signature_scheme.clone(),
        format: patch.format.map(|f| f.as_str().to_owned()),
        updated_at: now,
    };
    // A new endpoint, or a move to or from CloudEvents, asks (or stops
    // asking) for the receiver's consent afresh.
    let format = patch.format.unwrap_or(current.format());
    let moved = patch.url.as_ref().is_some_and(|url| *url != current.url);
    let verification = (format.needs_handshake() != current.format().needs_handshake()
        || (format.needs_handshake() && moved))
        .then(|| VerificationColumns::initial(format, now));
    match patch.enabled {
        // Re-enabling starts afresh: no reason, no failing period.
        Some(true) => {
            changes.enabled = Some(1);
            changes.disabled_reason = Some(None);
            changes.failing_since = Some(None);
        }
        Some(false) if current.is_enabled() => {
            changes.enabled = Some(0);
            changes.disabled_reason = Some(Some("disabled by its owner".into()));
        }
        _ => {}
    }
    Ok(Some(PlannedPatch {
        id: id.to_owned(),
        owner: owner.clone(),
        changes,
        verification,
    }))
}

/// Writes a planned patch's columns, whatever happened since it was read.
pub fn apply_patch(
    conn: &mut DbConnection,
    planned: &PlannedPatch,
) -> QueryResult<Option<SubscriptionRow>> {
    let owned = || {
        subscriptions::table
            .find(&planned.id)
            .filter(planned.owner.owns())
    };
    diesel::update(owned())
        .set(&planned.changes)
        .execute(conn)?;
    if let Some(verification) = &planned.verification {
        diesel::update(owned()).set(verification).execute(conn)?;
    }
    find_owned(conn, &planned.id, &planned.owner)
}

/// Makes `sealed` the secret of `id`, keeping the one it replaces signing
/// until `previous_expires`, if that one is still `current`: two rotations
/// at once cannot both win, and neither returns a secret that is not kept.
/// Returns whether it was replaced.
pub fn replace_secret(
    conn: &mut DbConnection,
    id: &str,
    owner: &Owner,
    current: &str,
    sealed: &str,
    previous_expires: PrimitiveDateTime,
    now: PrimitiveDateTime,
) -> QueryResult<bool> {
    let replaced = diesel::update(
        subscriptions::table
            .find(id)
            .filter(owner.owns())
            .filter(subscriptions::secret.eq(current)),
    )
    .set((
        subscriptions::secret.eq(sealed),
        subscriptions::previous_secret.eq(current),
        subscriptions::previous_secret_expires_at.eq(previous_expires),
        subscriptions::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(replaced == 1)
}

/// Takes up to `limit` subscriptions whose handshake is due, putting their
/// next one off until `until` so that no other worker asks meanwhile.
pub fn take_due_handshakes(
    conn: &mut DbConnection,
    now: PrimitiveDateTime,
    until: PrimitiveDateTime,
    limit: i64,
) -> QueryResult<Vec<SubscriptionRow>> {
    let pending = Verification::Pending.as_str();
    let due: Vec<String> = subscriptions::table
        .filter(subscriptions::verification.eq(pending))
        .filter(subscriptions::verification_due_at.le(now))
        .order(subscriptions::verification_due_at.asc())
        .limit(limit)
        .select(subscriptions::id)
        .load(conn)?;
    let mut taken = Vec::with_capacity(due.len());
    for id in due {
        // Another worker may have taken it since the read.
        let updated = diesel::update(
            subscriptions::table
                .find(&id)
                .filter(subscriptions::verification.eq(pending))
                .filter(subscriptions::verification_due_at.le(now)),
        )
        .set(subscriptions::verification_due_at.eq(until))
        .execute(conn)?;
        if updated == 1 {
            taken.push(id);
        }
    }
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    subscriptions::table
        .filter(subscriptions::id.eq_any(&taken))
        .select(SubscriptionRow::as_select())
        .load(conn)
}

/// Records a handshake asked of `url`, unless the subscription has moved
/// to another URL (or off CloudEvents) since; returns whether it did.
pub fn record_handshake(
    conn: &mut DbConnection,
    id: &str,
    url: &str,
    columns: &VerificationColumns,
) -> QueryResult<bool> {
    let updated = diesel::update(
        subscriptions::table
            .find(id)
            .filter(subscriptions::url.eq(url))
            .filter(subscriptions::verification.ne(Verification::NotRequired.as_str())),
    )
    .set(columns)
    .execute(conn)?;
    Ok(updated == 1)
}

/// Deletes the subscription with its deliveries and their attempts.
pub fn delete_owned(conn: &mut DbConnection, id: &str, owner: &Owner) -> QueryResult<bool> {
    use super::schema::{deliveries, delivery_attempts};

    let deleted =
        diesel::delete(subscriptions::table.find(id).filter(owner.owns())).execute(conn)? == 1;
    if deleted {
        let its_deliveries = deliveries::table
            .filter(deliveries::subscription_id.eq(id))
            .select(deliveries::id);
        diesel::delete(
            delivery_attempts::table.filter(delivery_attempts::delivery_id.eq_any(its_deliveries)),
        )
        .execute(conn)?;
        diesel::delete(deliveries::table.filter(deliveries::subscription_id.eq(id)))
            .execute(conn)?;
    }
    Ok(deleted)
}

/// The enabled subscriptions of `workspace` that want `event_type` on
/// `message_id` (those without a message filter included), in id order.
pub fn matching(
    conn: &mut DbConnection,
    workspace: &str,
    event_type: EventType,
    message_id: &str,
) -> QueryResult<Vec<SubscriptionRow>> {
    let pattern = EventTypes::stored_pattern(event_type);
    // Two halves, each served by its own index (an `OR` could scan them all).
    Fixed::new(
        "SELECT * FROM subscriptions
         WHERE workspace_id = ? AND message_id IS NULL AND enabled = 1 AND event_types LIKE ?
         UNION ALL
         SELECT * FROM subscriptions
         WHERE message_id = ? AND workspace_id = ? AND enabled = 1 AND event_types LIKE ?
         ORDER BY id",
        [
            Bind::Text(workspace),
            Bind::Text(&pattern),
            Bind::Text(message_id),
            Bind::Text(workspace),
            Bind::Text(&pattern),
        ],
    )
    .load(conn)
}

/// How stale a subscription's `last_success_at` may get before a success
/// writes it again: the health it shows is this coarse, and a busy
/// subscription costs one write a minute instead of one per batch.
pub const LAST_SUCCESS_GRANULARITY: Duration = Duration::from_secs(60);

/// Applies what attempts, in the order they finished, say about their
/// subscriptions: a 2xx makes a subscription healthy (and marks its last
/// success), a failure starts its failing period (if none runs), and one
/// failing for `disable_after` without a success, or answering 410, is
/// disabled. Subscriptions that succeeded cost one statement together.
/// Returns how many it disabled.
pub fn apply_verdicts(
    conn: &mut DbConnection,
    verdicts: &[(&str, Verdict, PrimitiveDateTime)],
    disable_after: Duration,
) -> QueryResult<usize> {
    /// What a subscription's attempts in this batch said.
    #[derive(Default)]
    struct Health {
        succeeded: bool,
        /// Failures after the last success.
        failures: Vec<(Verdict, PrimitiveDateTime)>,
    }
    let mut by_subscription: BTreeMap<&str, Health> = BTreeMap::new();
    for &(id, verdict, at) in verdicts {
        let health = by_subscription.entry(id).or_default();
        if verdict == Verdict::Delivered {
            health.succeeded = true;
            health.failures.clear();
        } else {
            health.failures.push((verdict, at));
        }
    }
    let succeeded: Vec<&str> = by_subscription
        .iter()
        .filter_map(|(id, health)| health.succeeded.then_some(*id))
        .collect();
    let last_success = verdicts
        .iter()
        .filter(|(_, verdict, _)| *verdict == Verdict::Delivered)
        .map(|&(_, _, at)| at)
        .max();
    if let Some(at) = last_success {
        let stale = at - LAST_SUCCESS_GRANULARITY;
        diesel::update(
            subscriptions::table
                .filter(subscriptions::id.eq_any(&succeeded))
                .filter(
                    subscriptions::failing_since
                        .is_not_null()
                        .or(subscriptions::last_success_at.is_null())
                        .or(subscriptions::last_success_at.lt(stale)),
                ),
        )
        .set((
            subscriptions::failing_since.eq(None::<PrimitiveDateTime>),
            subscriptions::last_success_at.eq(at),
        ))
        .execute(conn)?;
    }
    let mut disabled = 0;
    let failing = by_subscription
        .into_iter()
        .filter(|(_, health)| !health.failures.is_empty());
    for (id, Health { failures, .. }) in failing {
        if let Some((_, at)) = failures.iter().find(|(v, _)| *v == Verdict::Gone) {
            let reason = "the endpoint answered 410 Gone";
            tracing::warn!(subscription = id, reason, "subscription disabled");
            disable(conn, id, reason, *at)?;
            disabled += 1;
            continue;
        }
        let (first, last) = (failures[0].1, failures[failures.len() - 1].1);
        let since = record_failure(conn, id, first)?;
        if let Some(since) = since
            && since.assume_utc() + disable_after <= last.assume_utc()
        {
            let reason = format!("failing without a success since {}", since.assume_utc());
            tracing::warn!(subscription = id, reason, "subscription disabled");
            disable(conn, id, &reason, last)?;
            disabled += 1;
        }
    }
    Ok(disabled)
}

/// After a failure: starts the failing period if none is running; returns
/// when it started.
fn record_failure(
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
