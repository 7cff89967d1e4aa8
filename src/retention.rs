//! Retention, by a background task: events older than their workspace's
//! retention period (its own, or the configured one) are removed with their
//! deliveries and attempts, and the responses stored under
//! `Idempotency-Key`s once their keys have expired (24 h).

use std::time::Duration;

use diesel::QueryResult;
use tokio::sync::watch;

use crate::clock::{SharedClock, to_db};
use crate::db::writer::Writer;
use crate::db::{DbConnection, DbError, events, idempotency, workspaces};

const BATCH: i64 = 1_000;

/// Removes every event created longer ago than its workspace keeps events
/// (`retention` unless the workspace sets its own) before `clock`'s now;
/// returns how many. Works in batches so no transaction grows large.
pub async fn prune_expired(
    writer: &Writer,
    clock: &SharedClock,
    retention: Duration,
) -> Result<usize, DbError> {
    let now = clock.now_utc();
    let mut removed = 0;
    for workspace in writer.run(workspaces::list).await? {
        let kept = workspace
            .retention_days
            .and_then(|days| u64::try_from(days).ok())
            .map_or(retention, |days| Duration::from_secs(days * 86_400));
        let before = to_db(now - kept);
        let id = workspace.id;
        removed += in_batches(writer, move |conn| events::prune(conn, &id, before, BATCH)).await?;
    }
    Ok(removed)
}

/// Removes the responses stored under keys older than
/// [`idempotency::TTL`]; returns how many. (Lookups already ignore them.)
pub async fn prune_idempotency_keys(
    writer: &Writer,
    clock: &SharedClock,
) -> Result<usize, DbError> {
    let before = to_db(clock.now_utc() - idempotency::TTL);
    in_batches(writer, move |conn| idempotency::prune(conn, before, BATCH)).await
}

/// Forgets the uses of portal links that have expired (an expired link is
/// refused before its use is looked up); returns how many.
pub async fn prune_portal_link_uses(
    writer: &Writer,
    clock: &SharedClock,
) -> Result<usize, DbError> {
    let before = to_db(clock.now_utc());
    in_batches(writer, move |conn| {
        crate::db::portal_links::prune(conn, before, BATCH)
    })
    .await
}

/// Runs `prune` through the writer until a run removes less than a batch.
async fn in_batches<F>(writer: &Writer, prune: F) -> Result<usize, DbError>
where
    F: Fn(&mut DbConnection) -> QueryResult<usize> + Clone + Send + 'static,
{
    let mut removed = 0;
    loop {
        let batch = writer.run(prune.clone()).await?;
        removed += batch;
        if batch < BATCH as usize {
            return Ok(removed);
        }
    }
}

/// Prunes every `interval` until `stop` turns true.
pub async fn run(
    writer: Writer,
    clock: SharedClock,
    retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        report("events", prune_expired(&writer, &clock, retention).await);
        report(
            "idempotency keys",
            prune_idempotency_keys(&writer, &clock).await,
        );
        report(
            "portal link uses",
            prune_portal_link_uses(&writer, &clock).await,
        );
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn report(what: &str, pruned: Result<usize, DbError>) {
    match pruned {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "pruned expired {what}"),
        Err(error) => tracing::error!(
            error = format!("{:#}", anyhow::Error::from(error)),
            "cannot prune expired {what}"
        ),
    }
}
