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

/// Due deliveries ranked within their subscription; parameters:
/// `$now`, `$scan`, `$per_subscription`, `$batch` in the order the
/// placeholders of each backend expect.
const CANDIDATES: &str = "
    SELECT c.id FROM (
        SELECT d.id, d.next_attempt_at,
               d.subscription_id,
               ROW_NUMBER() OVER (PARTITION BY d.subscription_id ORDER BY d.next_attempt_at, d.id) AS rn
        FROM (
            SELECT d.id, d.subscription_id, d.next_attempt_at
            FROM deliveries d
            JOIN subscriptions s ON s.id = d.subscription_id AND s.enabled = 1
            WHERE d.status = 'pending' AND d.next_attempt_at <= {now}
              AND (d.locked_until IS NULL OR d.locked_until <= {now})
            ORDER BY d.next_attempt_at, d.id
            LIMIT {scan}
        ) d
    ) c
    LEFT JOIN (
        SELECT subscription_id, COUNT(*) AS n FROM deliveries
        WHERE locked_until > {now} AND status = 'pending'
        GROUP BY subscription_id
    ) leased ON leased.subscription_id = c.subscription_id
    WHERE c.rn <= {per_subscription} - COALESCE(leased.n, 0)
    ORDER BY c.next_attempt_at, c.id
    LIMIT {batch}";

/// Leases due deliveries to `worker` until `locked_until`; returns their ids.
pub fn claim(
    conn: &mut DbConnection,
    worker: &str,
    now: PrimitiveDateTime,
    locked_until: PrimitiveDateTime,
    limits: ClaimLimits,
) -> QueryResult<Vec<String>> {
    let rows: Vec<Claimed> = match conn {
        // One writer at a time: the UPDATE is atomic as it stands.
        DbConnection::Sqlite(conn) => {
            let candidates = CANDIDATES
                .replace("{now}", "?3")
                .replace("{scan}", "?4")
                .replace("{per_subscription}", "?5")
                .replace("{batch}", "?6");
            diesel::sql_query(format!(
                "UPDATE deliveries SET locked_until = ?1, locked_by = ?2
                 WHERE id IN ({candidates}) RETURNING id"
            ))
            .bind::<Timestamp, _>(locked_until)
            .bind::<Text, _>(worker)
            .bind::<Timestamp, _>(now)
            .bind::<BigInt, _>(limits.scan)
            .bind::<BigInt, _>(limits.per_subscription)
            .bind::<BigInt, _>(limits.batch)
            .load(conn)?
        }
        // Candidates are chosen without locks; the rows are then locked with
        // SKIP LOCKED and re-checked, so concurrent dispatchers never claim
        // the same delivery and never wait for each other.
        DbConnection::Postgres(conn) => {
            let candidates = CANDIDATES
                .replace("{now}", "$3")
                .replace("{scan}", "$4")
                .replace("{per_subscription}", "$5")
                .replace("{batch}", "$6");
            diesel::sql_query(format!(
                "UPDATE deliveries SET locked_until = $1, locked_by = $2
                 WHERE id IN (
                     SELECT id FROM deliveries
                     WHERE id IN ({candidates})
                       AND status = 'pending'
                       AND (locked_until IS NULL OR locked_until <= $3)
                     FOR UPDATE SKIP LOCKED
                 )
                 RETURNING id"
            ))
            .bind::<Timestamp, _>(locked_until)
            .bind::<Text, _>(worker)
            .bind::<Timestamp, _>(now)
            .bind::<BigInt, _>(limits.scan)
            .bind::<BigInt, _>(limits.per_subscription)
            .bind::<BigInt, _>(limits.batch)
            .load(conn)?
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
    let spawned = std::thread::Builder::new()
        .name("thinhook-listen".into())
        .spawn(move || {
            while !*stop.borrow() {
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
                while !*stop.borrow() {
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
