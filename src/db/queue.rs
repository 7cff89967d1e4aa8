//! The delivery queue: leases, claims, hand-off and liveness, with the SQL
//! that differs between the backends.
//!
//! A delivery is *leased* to one worker (`locked_by`, `locked_until`) while
//! that worker is to attempt it; an outcome is recorded only while the lease
//! is still that worker's (fencing, in [`super::deliveries`]). Live workers
//! renew their leases while work waits. A worker's leases come two ways:
//!
//! - at creation: a dispatching process leases the deliveries it creates to
//!   itself in the same transaction and hands them to its dispatcher at
//!   commit ([`Handoff`]), so the common path needs no claim;
//! - by [`claim`]: for backlog, retries and deliveries of other processes,
//!   taken round robin across subscriptions, so one huge or slow subscription
//!   never starves the others.
//!
//! Only pending deliveries are ever leased (an outcome releases the lease in
//! the update that changes the status), so queries on leases look at the
//! leases alone: that way only the small index of leased rows can serve
//! them, never the index of everything pending.
//!
//! Leases count against a subscription's bound: a claim takes for a
//! subscription at most the bound minus the live leases it already has, from
//! any worker. A worker that is a subscription's *only* holder may lease more
//! (all its new deliveries at creation, a few times the bound by claim: it
//! runs at most the bound at once), and then nobody else claims that
//! subscription until it has drained. So the
//! deliveries of one subscription in flight across all processes stay within
//! the bound. On PostgreSQL the batches of dispatching processes take
//! [`QUEUE_LOCK`] first, so claims and leases at creation never race.
//!
//! A dead worker's leases are taken back at once, not when they expire: on
//! SQLite the one dispatching process releases every lease when it starts; on
//! PostgreSQL each worker holds a session advisory lock while it lives
//! ([`super::presence`]), and [`reap`] frees the leases of workers whose lock
//! can be taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use time::PrimitiveDateTime;
use tokio::sync::{Notify, mpsc};

use super::DbConnection;
use super::deliveries::{self, AttemptOutcome, Leased};
use super::fixed::{Bind, Fixed};
use super::models::AttemptRow;
use super::schema::{deliveries as d, workers};
use crate::clock::SharedClock;

/// The `LISTEN`/`NOTIFY` channel that announces new deliveries.
pub const CHANNEL: &str = "thinhook_deliveries";

/// Advisory lock (two-key form) that serializes the write batches of
/// dispatching processes on PostgreSQL. Workers' own liveness locks use the
/// one-key form, a separate key space.
const QUEUE_LOCK: (i32, i32) = (0x7468_6e68, 1); // "thnh"

/// Begins the writer's transaction. SQLite: `BEGIN IMMEDIATE`, taking the
/// write lock up front. PostgreSQL: when `serialize`, also the queue lock, in
/// the same round trip.
pub fn begin(conn: &mut DbConnection, serialize: bool) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(conn) => {
            AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE")
        }
        DbConnection::Postgres(conn) if serialize => {
            let (class, key) = QUEUE_LOCK;
            AnsiTransactionManager::begin_transaction_sql(
                conn,
                &format!("BEGIN; SELECT pg_advisory_xact_lock({class}, {key})"),
            )
        }
        DbConnection::Postgres(conn) => AnsiTransactionManager::begin_transaction(conn),
    }
}

/// Commits what [`begin`] began; rolls back if the commit fails.
pub fn commit(conn: &mut DbConnection) -> QueryResult<()> {
    fn commit_or_roll_back<C>(conn: &mut C) -> QueryResult<()>
    where
        C: Connection<TransactionManager = AnsiTransactionManager>,
    {
        AnsiTransactionManager::commit_transaction(conn).inspect_err(|_| {
            let _ = AnsiTransactionManager::rollback_transaction(conn);
        })
    }
    match conn {
        DbConnection::Sqlite(conn) => commit_or_roll_back(conn),
        DbConnection::Postgres(conn) => commit_or_roll_back(conn),
    }
}

/// Rolls back what [`begin`] began.
pub fn roll_back(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Sqlite(conn) => AnsiTransactionManager::rollback_transaction(conn),
        DbConnection::Postgres(conn) => AnsiTransactionManager::rollback_transaction(conn),
    }
}

/// How many deliveries a process holds in memory (queued, in flight, or
/// waiting to be recorded): a soft bound shared by the writer, which leases
/// at creation, and the dispatcher, which claims.
#[derive(Debug)]
pub struct Capacity {
    limit: usize,
    held: AtomicUsize,
}

impl Capacity {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    pub fn free(&self) -> usize {
        self.limit.saturating_sub(self.held.load(Ordering::Relaxed))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn take(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    pub fn give_back(&self, n: usize) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(n))
            });
    }
}

/// How the writer passes the deliveries it leased at creation to this
/// process's dispatcher.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The dispatcher's worker id, which its leases carry.
    pub worker: String,
    pub lease: Duration,
    pub clock: SharedClock,
    pub per_subscription: i64,
    pub capacity: Arc<Capacity>,
    pub sender: mpsc::UnboundedSender<Vec<Leased>>,
    /// Wakes the dispatcher to claim what could not be leased at creation.
    pub wake: Arc<Notify>,
}

impl Handoff {
    /// Gives committed, leased deliveries to the dispatcher.
    pub fn deliver(&self, leased: Vec<Leased>) {
        if leased.is_empty() {
            return;
        }
        self.capacity.take(leased.len());
        if let Err(returned) = self.sender.send(leased) {
            // The dispatcher has stopped; its leases are released when it
            // stops, or taken back when the next one starts.
            self.capacity.give_back(returned.0.len());
        }
    }
}

/// PostgreSQL: live leases per subscription, `(this worker's, everyone
/// else's)`. The index of leased rows, by subscription and lease end, is the
/// one that fits. (SQLite has one dispatching process: nobody else holds
/// leases.)
pub fn lease_counts(
    conn: &mut DbConnection,
    subscription_ids: &[&str],
    worker: &str,
    now: PrimitiveDateTime,
) -> QueryResult<HashMap<String, (i64, i64)>> {
    let DbConnection::Postgres(conn) = conn else {
        return Ok(HashMap::new());
    };
    // A query diesel prepares once (`IN` is `= ANY($1)` on PostgreSQL).
    let rows: Vec<(String, Option<String>, i64)> = d::table
        .filter(d::subscription_id.eq_any(subscription_ids))
        .filter(d::locked_until.is_not_null())
        .filter(d::locked_until.gt(now))
        .filter(d::status.eq(super::deliveries::PENDING))
        .group_by((d::subscription_id, d::locked_by))
        .select((d::subscription_id, d::locked_by, diesel::dsl::count_star()))
        .load(conn)?;
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    for (subscription, holder, n) in rows {
        let entry = counts.entry(subscription).or_default();
        if holder.as_deref() == Some(worker) {
            entry.0 += n;
        } else {
            entry.1 += n;
        }
    }
    Ok(counts)
}

#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// Deliveries claimed at most.
    pub batch: i64,
    /// Live leases a subscription may have, from all workers together.
    pub per_subscription: i64,
    /// Live leases a worker may hold of a subscription no other worker
    /// holds: a worker runs at most `per_subscription` at once anyway, and
    /// the rest wait in its queue instead of a claim away.
    pub sole_holder: i64,
    /// Subscriptions visited per pass; the cursor carries on from there.
    pub window: i64,
}

/// What a claim took, and where the next one starts.
#[derive(Debug, Default)]
pub struct Claim {
    pub leased: Vec<Leased>,
    /// The subscription id after which the next claim starts (round robin).
    pub cursor: String,
}

#[derive(QueryableByName)]
struct Candidate {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    subscription_id: String,
    /// Leases the subscription may still take.
    #[diesel(sql_type = BigInt)]
    room: i64,
}

#[derive(QueryableByName)]
struct WindowEnd {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    id: Option<String>,
}

/// Higher than every id (ids are ASCII letters, digits and `_`).
const END: &str = "~";

/// Due deliveries of the deliverable subscriptions (enabled, and verified
/// if they need to be) in `(after, upto]`, oldest
/// first per subscription, as many per subscription as its room allows (at
/// most `cap`). The subscriptions are visited in id order and the rows
/// streamed, so that the claim stops at `batch` rows without looking at the
/// rest: no sort over the whole backlog. Each subscription's live leases
/// are counted by a lookup of its own, which only the index of leased rows
/// serves well: a young table has no statistics, and a count over the whole
/// table was planned as a scan of all of it.
/// Placeholders: now, after, upto, per subscription, batch, cap.
const CANDIDATES: &str = "
    WITH subs AS MATERIALIZED (
        SELECT id,
            CASE WHEN others = 0 THEN {sole} - mine ELSE {per_subscription} - mine - others END
                AS room
        FROM (
            SELECT s.id,
                (SELECT COUNT(*) FROM deliveries h {leased}
                 WHERE h.subscription_id = s.id AND h.locked_until IS NOT NULL
                   AND h.locked_until > {now} AND h.locked_by = {worker}) AS mine,
                (SELECT COUNT(*) FROM deliveries h {leased}
                 WHERE h.subscription_id = s.id AND h.locked_until IS NOT NULL
                   AND h.locked_until > {now} AND h.locked_by <> {worker}) AS others
            FROM subscriptions s
            WHERE s.enabled = 1 AND s.verification IN ('not_required', 'verified')
              AND s.id > {after} AND s.id <= {upto}
        ) counted
        WHERE (others = 0 AND mine < {sole}) OR mine + others < {per_subscription}
        ORDER BY id
    )
    SELECT d.id, subs.id AS subscription_id, subs.room FROM subs {join}
    LIMIT {batch}";

/// PostgreSQL: a lateral subquery per subscription, locking what it takes so
/// that concurrent claims scan different rows.
const JOIN_POSTGRES: &str = "CROSS JOIN LATERAL (
        SELECT d.id FROM deliveries d
        WHERE d.subscription_id = subs.id AND d.status = 'pending' AND d.next_attempt_at <= {now}
          AND (d.locked_until IS NULL OR d.locked_until <= {now})
        ORDER BY d.next_attempt_at, d.id
        LIMIT LEAST(subs.room, {cap})
        FOR UPDATE OF d SKIP LOCKED
    ) d";

/// SQLite: a correlated subquery per subscription (its `LIMIT` cannot name
/// the room, which is applied afterwards); one writer, so no locking.
const JOIN_SQLITE: &str = "JOIN deliveries d ON d.id IN (
        SELECT d2.id FROM deliveries d2
        WHERE d2.subscription_id = subs.id AND d2.status = 'pending' AND d2.next_attempt_at <= {now}
          AND (d2.locked_until IS NULL OR d2.locked_until <= {now})
        ORDER BY d2.next_attempt_at, d2.id
        LIMIT {cap}
    )";

fn candidates_sql(placeholder: impl Fn(usize) -> String, join: &str, leased: &str) -> String {
    CANDIDATES
        .replace("{join}", join)
        .replace("{leased}", leased)
        .replace("{now}", &placeholder(1))
        .replace("{after}", &placeholder(2))
        .replace("{upto}", &placeholder(3))
        .replace("{per_subscription}", &placeholder(4))
        .replace("{batch}", &placeholder(5))
        .replace("{cap}", &placeholder(6))
        .replace("{worker}", &placeholder(7))
        .replace("{sole}", &placeholder(8))
}

/// The id of the `window`-th deliverable subscription after `after`, or [`END`].
fn window_end(conn: &mut DbConnection, after: &str, window: i64) -> QueryResult<String> {
    const SQL: &str = "SELECT (SELECT id FROM subscriptions
                       WHERE enabled = 1 AND verification IN ('not_required', 'verified')
                         AND id > {after}
                       ORDER BY id LIMIT 1 OFFSET {skip}) AS id";
    macro_rules! run {
        ($conn:expr, $placeholder:expr) => {
            diesel::sql_query(
                SQL.replace("{after}", &$placeholder(1))
                    .replace("{skip}", &$placeholder(2)),
            )
            .bind::<Text, _>(after)
            .bind::<BigInt, _>(window - 1)
            .get_result::<WindowEnd>($conn)?
        };
    }
    let end = match conn {
        DbConnection::Sqlite(conn) => run!(conn, |n| format!("?{n}")),
        DbConnection::Postgres(conn) => run!(conn, |n| format!("${n}")),
    };
    Ok(end.id.unwrap_or_else(|| END.to_owned()))
}

fn candidates(
    conn: &mut DbConnection,
    worker: &str,
    now: PrimitiveDateTime,
    (after, upto): (&str, &str),
    limits: ClaimLimits,
) -> QueryResult<Vec<Candidate>> {
    macro_rules! run {
        ($conn:expr, $sql:expr) => {
            diesel::sql_query($sql)
                .bind::<Timestamp, _>(now)
                .bind::<Text, _>(after)
                .bind::<Text, _>(upto)
                .bind::<BigInt, _>(limits.per_subscription)
                .bind::<BigInt, _>(limits.batch)
                .bind::<BigInt, _>(
                    limits
                        .sole_holder
                        .max(limits.per_subscription)
                        .min(limits.batch),
                )
                .bind::<Text, _>(worker)
                .bind::<BigInt, _>(limits.sole_holder)
                .load::<Candidate>($conn)?
        };
    }
    let mut rows = match conn {
        // A subscription's leases are counted in the small index of leased
        // rows; without statistics SQLite might walk all its deliveries.
        DbConnection::Sqlite(conn) => run!(
            conn,
            candidates_sql(
                |n| format!("?{n}"),
                JOIN_SQLITE,
                "INDEXED BY deliveries_leased"
            )
        ),
        DbConnection::Postgres(conn) => {
            run!(conn, candidates_sql(|n| format!("${n}"), JOIN_POSTGRES, ""))
        }
    };
    // Keep within each subscription's room (SQLite could not say it in SQL).
    let mut taken: HashMap<String, i64> = HashMap::new();
    rows.retain(|row| {
        let n = taken.entry(row.subscription_id.clone()).or_default();
        *n += 1;
        *n <= row.room
    });
    Ok(rows)
}

/// Leases up to `limits.batch` due deliveries to `worker` until
/// `locked_until`, visiting the subscriptions round robin: from `cursor` to
/// the end, then from the beginning back to `cursor`, a window at a time.
pub fn claim(
    conn: &mut DbConnection,
    worker: &str,
    now: PrimitiveDateTime,
    locked_until: PrimitiveDateTime,
    limits: ClaimLimits,
    cursor: &str,
) -> QueryResult<Claim> {
    let batch = usize::try_from(limits.batch).unwrap_or(0);
    let mut rows = Vec::new();
    let mut after = cursor.to_owned();
    let mut wrapped = false;
    let next = loop {
        let mut upto = window_end(conn, &after, limits.window)?;
        if wrapped && (upto == END || upto.as_str() >= cursor) {
            upto = cursor.to_owned();
        }
        let remaining = ClaimLimits {
            batch: (batch - rows.len()) as i64,
            ..limits
        };
        rows.extend(candidates(conn, worker, now, (&after, &upto), remaining)?);
        if rows.len() >= batch {
            // The next claim starts after the last subscription served.
            break rows
                .last()
                .map(|row: &Candidate| row.subscription_id.clone())
                .unwrap_or_default();
        }
        if wrapped && upto == cursor {
            break String::new();
        }
        if upto == END {
            if cursor.is_empty() {
                break String::new();
            }
            wrapped = true;
            after.clear();
        } else {
            after = upto;
        }
    };
    let ids: Vec<String> = rows.into_iter().map(|row| row.id).collect();
    if ids.is_empty() {
        return Ok(Claim {
            leased: Vec::new(),
            cursor: next,
        });
    }
    diesel::update(d::table.filter(d::id.eq_any(&ids)))
        .set((d::locked_until.eq(locked_until), d::locked_by.eq(worker)))
        .execute(conn)?;
    Ok(Claim {
        leased: deliveries::load_leased(conn, &ids)?,
        cursor: next,
    })
}

/// Applies attempt outcomes to the deliveries still leased to `worker`,
/// releasing the leases, and inserts their attempt rows; returns, per
/// outcome, whether it applied. SQLite: a statement per delivery (in
/// process, cheap). PostgreSQL: one statement for all, over arrays, so the
/// round trip is paid once.
pub fn record_fenced(
    conn: &mut DbConnection,
    worker: &str,
    outcomes: &[AttemptOutcome],
) -> QueryResult<Vec<bool>> {
    match conn {
        DbConnection::Sqlite(_) => {
            let mut recorded = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                let (attempt, update) = (&outcome.attempt, &outcome.update);
                let updated = Fixed::new(
                    RECORD_SQLITE,
                    [
                        Bind::Text(update.status),
                        Bind::Integer(attempt.number),
                        Bind::Timestamp(update.next_attempt_at),
                        Bind::OptionalInteger(update.last_status_code),
                        Bind::OptionalText(update.last_error.as_deref()),
                        Bind::OptionalTimestamp(update.delivered_at),
                        Bind::Text(&attempt.delivery_id),
                        Bind::Text(worker),
                    ],
                )
                .execute(conn)?;
                recorded.push(updated == 1);
            }
            let attempts: Vec<AttemptRow> = outcomes
                .iter()
                .zip(&recorded)
                .filter(|(_, recorded)| **recorded)
                .map(|(outcome, _)| outcome.attempt.clone())
                .collect();
            deliveries::insert_attempts(conn, &attempts)?;
            Ok(recorded)
        }
        DbConnection::Postgres(conn) => {
            fn column<T>(outcomes: &[AttemptOutcome], f: impl Fn(&AttemptOutcome) -> T) -> Vec<T> {
                outcomes.iter().map(f).collect()
            }
            let ids = column(outcomes, |o| o.attempt.delivery_id.clone());
            let applied: Vec<Recorded> = diesel::sql_query(RECORD_POSTGRES)
                .bind::<Array<Text>, _>(&ids)
                .bind::<Array<Text>, _>(column(outcomes, |o| o.update.status.to_owned()))
                .bind::<Array<Integer>, _>(column(outcomes, |o| o.attempt.number))
                .bind::<Array<Timestamp>, _>(column(outcomes, |o| o.update.next_attempt_at))
                .bind::<Array<Nullable<Integer>>, _>(column(outcomes, |o| {
                    o.update.last_status_code
                }))
                .bind::<Array<Nullable<Text>>, _>(column(outcomes, |o| o.update.last_error.clone()))
                .bind::<Array<Nullable<Timestamp>>, _>(column(outcomes, |o| o.update.delivered_at))
                .bind::<Array<Timestamp>, _>(column(outcomes, |o| o.attempt.started_at))
                .bind::<Array<BigInt>, _>(column(outcomes, |o| o.attempt.duration_ms))
                .bind::<Array<Nullable<Text>>, _>(column(outcomes, |o| {
                    o.attempt.response_excerpt.clone()
                }))
                .bind::<Text, _>(worker)
                .load(conn)?;
            let applied: std::collections::HashSet<String> =
                applied.into_iter().map(|row| row.id).collect();
            Ok(ids.iter().map(|id| applied.contains(id)).collect())
        }
    }
}

/// SQLite: one outcome, fenced by the lease.
const RECORD_SQLITE: &str = "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?,
        last_status_code = ?, last_error = ?, delivered_at = ?, locked_until = NULL, locked_by = NULL
    WHERE id = ? AND locked_by = ? AND status = 'pending'";

/// See the function in the PostgreSQL migration that made the engine.
const RECORD_POSTGRES: &str =
    "SELECT thinhook_record_outcomes($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS id";

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Text)]
    id: String,
}

/// Extends every lease `worker` holds; returns how many.
pub fn renew(
    conn: &mut DbConnection,
    worker: &str,
    locked_until: PrimitiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        d::table
            .filter(d::locked_until.is_not_null())
            .filter(d::locked_by.eq(worker)),
    )
    .set(d::locked_until.eq(locked_until))
    .execute(conn)
}

/// Gives up `worker`'s leases of `ids` without an attempt: due again at once.
pub fn release(conn: &mut DbConnection, ids: &[String], worker: &str) -> QueryResult<usize> {
    diesel::update(
        d::table
            .filter(d::id.eq_any(ids))
            .filter(d::locked_by.eq(worker)),
    )
    .set((
        d::locked_until.eq(None::<PrimitiveDateTime>),
        d::locked_by.eq(None::<String>),
    ))
    .execute(conn)
}

/// Releases every lease of `worker`, or of everyone when `None`.
pub fn release_all(conn: &mut DbConnection, worker: Option<&str>) -> QueryResult<usize> {
    let unleased = (
        d::locked_until.eq(None::<PrimitiveDateTime>),
        d::locked_by.eq(None::<String>),
    );
    let leased = d::table.filter(d::locked_until.is_not_null());
    match worker {
        Some(worker) => diesel::update(leased.filter(d::locked_by.eq(worker)))
            .set(unleased)
            .execute(conn),
        None => diesel::update(leased).set(unleased).execute(conn),
    }
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// PostgreSQL: frees the leases of every registered worker but `me` that is
/// no longer alive (its liveness lock can be taken) and forgets it. Returns
/// `(worker, leases released)` per dead worker.
pub fn reap(conn: &mut DbConnection, me: &str) -> QueryResult<Vec<(String, usize)>> {
    let DbConnection::Postgres(pg) = conn else {
        return Ok(Vec::new());
    };
    let others: Vec<(String, i64)> = workers::table
        .filter(workers::id.ne(me))
        .select((workers::id, workers::lock_key))
        .load(pg)?;
    let mut dead = Vec::new();
    for (worker, key) in others {
        // Held by a live worker's session; free once that session ended. The
        // transaction-scoped lock is given back at commit.
        let free = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(key)
            .get_result::<Locked>(pg)?
            .locked;
        if free {
            dead.push(worker);
        }
    }
    let mut reaped = Vec::with_capacity(dead.len());
    for worker in dead {
        let released = release_all(conn, Some(&worker))?;
        diesel::delete(workers::table.find(&worker)).execute(conn)?;
        reaped.push((worker, released));
    }
    Ok(reaped)
}

/// Tells dispatchers in other processes that deliveries are waiting. Call
/// inside the transaction that queued them: PostgreSQL sends it on commit.
pub fn announce(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Postgres(conn) => diesel::sql_query(format!("NOTIFY {CHANNEL}"))
            .execute(conn)
            .map(drop),
        // SQLite has one dispatching process, woken in process.
        DbConnection::Sqlite(_) => Ok(()),
    }
}
