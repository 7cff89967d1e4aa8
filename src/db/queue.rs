//! The delivery queue's backend-specific SQL: claiming due deliveries under a
//! lease, and waking dispatchers in other processes.
//!
//! A claim takes up to `batch` due, unleased deliveries of enabled
//! subscriptions, oldest first, but never more per subscription than
//! `per_subscription` minus the leases that subscription already has — so
//! one slow endpoint cannot fill the batch. Expired leases count as free.
//! Only the scan's first `scan` due rows are considered, which keeps a claim
//! cheap under a large backlog.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use time::PrimitiveDateTime;

use super::DbConnection;

/// The `LISTEN`/`NOTIFY` channel that announces new deliveries.
pub const CHANNEL: &str = "thinhook_deliveries";

#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    pub batch: i64,
    pub per_subscription: i64,
    pub scan: i64,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The claim, for both backends. `{lock}` is where PostgreSQL locks the
/// scanned rows with `FOR UPDATE SKIP LOCKED`: concurrent dispatchers then
/// scan *different* rows instead of racing for the same head of the queue,
/// and a row another dispatcher leased meanwhile is re-checked and dropped.
/// Placeholders: lease end, worker, now, scan, per subscription, batch.
const CLAIM: &str = "
    WITH scan AS MATERIALIZED (
        SELECT d.id, d.subscription_id, d.next_attempt_at
        FROM deliveries d
        WHERE d.status = 'pending' AND d.next_attempt_at <= {now}
          AND (d.locked_until IS NULL OR d.locked_until <= {now})
          AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = d.subscription_id AND s.enabled = 1)
        ORDER BY d.next_attempt_at, d.id
        LIMIT {scan}
        {lock}
    ),
    ranked AS (
        SELECT id, subscription_id, next_attempt_at,
               ROW_NUMBER() OVER (PARTITION BY subscription_id ORDER BY next_attempt_at, id) AS rn
        FROM scan
    ),
    leased AS (
        SELECT subscription_id, COUNT(*) AS n FROM deliveries
        WHERE locked_until > {now} AND status = 'pending'
        GROUP BY subscription_id
    ),
    chosen AS (
        SELECT r.id FROM ranked r
        LEFT JOIN leased ON leased.subscription_id = r.subscription_id
        WHERE r.rn <= {per_subscription} - COALESCE(leased.n, 0)
        ORDER BY r.next_attempt_at, r.id
        LIMIT {batch}
    )
    UPDATE deliveries SET locked_until = {lease_end}, locked_by = {worker}
    WHERE id IN (SELECT id FROM chosen)
    RETURNING id";

fn claim_sql(placeholder: impl Fn(usize) -> String, lock: &str) -> String {
    CLAIM
        .replace("{lease_end}", &placeholder(1))
        .replace("{worker}", &placeholder(2))
        .replace("{now}", &placeholder(3))
        .replace("{scan}", &placeholder(4))
        .replace("{per_subscription}", &placeholder(5))
        .replace("{batch}", &placeholder(6))
        .replace("{lock}", lock)
}

/// Leases due deliveries to `worker` until `locked_until`; returns their ids.
pub fn claim(
    conn: &mut DbConnection,
    worker: &str,
    now: PrimitiveDateTime,
    locked_until: PrimitiveDateTime,
    limits: ClaimLimits,
) -> QueryResult<Vec<String>> {
    macro_rules! run {
        ($conn:expr, $sql:expr) => {
            diesel::sql_query($sql)
                .bind::<Timestamp, _>(locked_until)
                .bind::<Text, _>(worker)
                .bind::<Timestamp, _>(now)
                .bind::<BigInt, _>(limits.scan)
                .bind::<BigInt, _>(limits.per_subscription)
                .bind::<BigInt, _>(limits.batch)
                .load::<Claimed>($conn)?
        };
    }
    let rows = match conn {
        // One writer at a time: the statement is atomic as it stands.
        DbConnection::Sqlite(conn) => run!(conn, claim_sql(|n| format!("?{n}"), "")),
        DbConnection::Postgres(conn) => {
            run!(
                conn,
                claim_sql(|n| format!("${n}"), "FOR UPDATE OF d SKIP LOCKED")
            )
        }
    };
    Ok(rows.into_iter().map(|row| row.id).collect())
}

/// Tells dispatchers in other processes that deliveries are waiting. Call
/// inside the transaction that queued them: PostgreSQL sends it on commit.
pub fn announce(conn: &mut DbConnection) -> QueryResult<()> {
    match conn {
        DbConnection::Postgres(conn) => diesel::sql_query(format!("NOTIFY {CHANNEL}"))
            .execute(conn)
            .map(drop),
        // SQLite has one process; the in-process wake-up suffices.
        DbConnection::Sqlite(_) => Ok(()),
    }
}

/// Listens for [`CHANNEL`] on a connection of its own and wakes the local
/// dispatcher on each notification, until `stop` turns true. Runs on a
/// thread of its own: diesel's notification API is synchronous.
pub fn spawn_listener(
    url: String,
    wake: std::sync::Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use diesel::{Connection, PgConnection};

    const IDLE: std::time::Duration = std::time::Duration::from_millis(20);
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    // Stop when told to, or when the application that could tell is gone.
    let stopped = move || *stop.borrow() || stop.has_changed().is_err();
    let spawned = std::thread::Builder::new()
        .name("thinhook-listen".into())
        .spawn(move || {
            while !stopped() {
                let mut conn = match PgConnection::establish(&url).and_then(|mut conn| {
                    diesel::sql_query(format!("LISTEN {CHANNEL}"))
                        .execute(&mut conn)
                        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
                    Ok(conn)
                }) {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!(%error, "cannot LISTEN for new deliveries; polling only");
                        std::thread::sleep(RETRY);
                        continue;
                    }
                };
                while !stopped() {
                    let mut woken = false;
                    let mut broken = false;
                    for notification in conn.notifications_iter() {
                        match notification {
                            Ok(_) => woken = true,
                            Err(error) => {
                                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                                broken = true;
                                break;
                            }
                        }
                    }
                    if woken {
                        wake.notify_one();
                    }
                    if broken {
                        break;
                    }
                    std::thread::sleep(IDLE);
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the LISTEN thread; polling only");
    }
}
