//! Revoked clients, every client's workspace, and the workspaces' own rate
//! limits, known in memory so that verifying and admitting a request costs
//! no database query.
//!
//! The set is read at start and again every `refresh` interval. On
//! PostgreSQL, `thinhook clients revoke` also sends a notification
//! ([`CHANNEL`]) that makes every API process read it at once. So a
//! revocation takes effect within milliseconds on PostgreSQL, and within one
//! refresh interval on SQLite (or if a notification is lost).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::tokens::TokenError;
use crate::db::{Database, DbError, clients, workspaces};
use crate::domain::WorkspaceId;
use crate::rate_limit::Policy;

/// The `LISTEN`/`NOTIFY` channel that announces a revocation.
pub const CHANNEL: &str = "thinhook_revocations";

/// A workspace's own API rate: `(per second, burst)`; `None`: the default.
type OwnRate = (Option<i32>, Option<i32>);

#[derive(Debug)]
pub struct Revocations {
    revoked: RwLock<HashSet<String>>,
    /// Each client's workspace, by client id.
    workspaces: RwLock<HashMap<String, String>>,
    /// The API rate limits workspaces set for themselves, by workspace id.
    workspace_rates: RwLock<HashMap<String, OwnRate>>,
    db: Database,
    /// Woken by a notification: read the set again now.
    pub changed: Arc<Notify>,
}

impl Revocations {
    /// Reads the revoked clients.
    pub async fn load(db: Database) -> Result<Self, DbError> {
        let revocations = Self {
            revoked: RwLock::default(),
            workspaces: RwLock::default(),
            workspace_rates: RwLock::default(),
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

    /// Whether a token of `client_id` acting in `workspace` stands: the
    /// client is not revoked and is (still) in that workspace. A client
    /// registered since the last refresh is not known yet, and stands.
    pub fn check(&self, client_id: &str, workspace: &WorkspaceId) -> Result<(), TokenError> {
        if self.is_revoked(client_id) {
            return Err(TokenError::ClientRevoked);
        }
        let workspaces = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        match workspaces.get(client_id) {
            Some(current) if current != workspace.as_str() => Err(TokenError::WorkspaceChanged),
            _ => Ok(()),
        }
    }

    /// The API rate limit of `workspace`'s clients together: its own, or
    /// `default`; `None` when it has none.
    pub fn workspace_rate(&self, workspace: &WorkspaceId, default: Policy) -> Option<Policy> {
        let rates = self
            .workspace_rates
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = rates.get(workspace.as_str()).copied().unwrap_or_default();
        let policy = Policy {
            rate: rate.map_or(default.rate, f64::from),
            burst: burst.map_or(default.burst, |b| u32::try_from(b).unwrap_or(0)),
        };
        (policy.rate > 0.0 && policy.burst > 0).then_some(policy)
    }

    pub async fn refresh(&self) -> Result<(), DbError> {
        let (all_workspaces, standing) = self
            .db
            .run(|conn| Ok((workspaces::list(conn)?, clients::standing(conn)?)))
            .await?;
        // Only workspaces with a rate of their own: with none (the usual
        // case) a request's lookup is on an empty map.
        *self
            .workspace_rates
            .write()
            .unwrap_or_else(|p| p.into_inner()) = all_workspaces
            .into_iter()
            .filter(|w| w.api_per_second.is_some() || w.api_burst.is_some())
            .map(|w| (w.id, (w.api_per_second, w.api_burst)))
            .collect();
        let revoked = standing
            .iter()
            .filter(|client| client.revoked)
            .map(|client| client.id.clone())
            .collect();
        let workspaces = standing
            .into_iter()
            .map(|client| (client.id, client.workspace_id))
            .collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = revoked;
        *self.workspaces.write().unwrap_or_else(|p| p.into_inner()) = workspaces;
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
