//! Revoked clients, known in memory so that verifying a token costs no
//! database query.
//!
//! The set is read at start and again every `refresh` interval. On
//! PostgreSQL, `thinhook clients revoke` also sends a notification
//! ([`CHANNEL`]) that makes every API process read it at once. So a
//! revocation takes effect within milliseconds on PostgreSQL, and within one
//! refresh interval on SQLite (or if a notification is lost).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::db::{Database, DbError, clients};

/// The `LISTEN`/`NOTIFY` channel that announces a revocation.
pub const CHANNEL: &str = "thinhook_revocations";

#[derive(Debug)]
pub struct Revocations {
    revoked: RwLock<HashSet<String>>,
    db: Database,
    /// Woken by a notification: read the set again now.
    pub changed: Arc<Notify>,
}

impl Revocations {
    /// Reads the revoked clients.
    pub async fn load(db: Database) -> Result<Self, DbError> {
        let revocations = Self {
            revoked: RwLock::default(),
            db,
            changed: Arc::new(Notify::new()),
        };
        revocations.refresh().await?;
        Ok(revocations)
    }

    pub fn is_revoked(&self, client_id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(client_id)
    }

    pub async fn refresh(&self) -> Result<(), DbError> {
        let revoked = self.db.run(clients::revoked_ids).await?;
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked.into_iter().collect();
        Ok(())
    }

    /// Keeps the set fresh until `stop` turns true.
    pub async fn run(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.changed.notified() => {}
                _ = stop.changed() => return,
            }
            if let Err(error) = self.refresh().await {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "cannot read revoked clients; keeping the last known set"
                );
            }
        }
    }
}
