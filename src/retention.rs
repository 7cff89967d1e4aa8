//! Event retention: events older than the retention period are removed, with
//! their deliveries and attempts, by a background task.

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{SharedClock, to_db};
use crate::db::writer::Writer;
use crate::db::{DbError, events};

const BATCH: i64 = 1_000;

/// Removes every event created more than `retention` before `clock`'s now;
/// returns how many. Works in batches so no transaction grows large.
pub async fn prune_expired(
    writer: &Writer,
    clock: &SharedClock,
    retention: Duration,
) -> Result<usize, DbError> {
    let before = to_db(clock.now_utc() - retention);
    let mut removed = 0;
    loop {
        let batch = writer
            .run(move |conn| events::prune(conn, before, BATCH))
            .await?;
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
        match prune_expired(&writer, &clock, retention).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "pruned expired events"),
            Err(error) => tracing::error!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "cannot prune expired events"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
