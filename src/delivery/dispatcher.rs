//! The dispatcher: claims due deliveries under a lease, makes each attempt
//! with no database connection held, and records what happened.
//!
//! It wakes when a delivery is queued (in-process, or through PostgreSQL
//! `NOTIFY` from another process) and polls as a fallback. Concurrency is
//! bounded for the whole process (a semaphore) and per subscription (in the
//! claim itself). On shutdown it stops claiming, lets attempts in flight
//! finish for a grace period, and releases the leases of the rest.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use url::Url;

use super::client::WebhookClient;
use super::payload::ThinEvent;
use super::retry::{self, Outcome, RetryPolicy};
use super::signer;
use crate::clock::{SharedClock, to_db};
use crate::db::deliveries::{self, AttemptUpdate, Claimed};
use crate::db::models::{AttemptRow, EventRow, SubscriptionRow};
use crate::db::queue::{self, ClaimLimits};
use crate::db::{Database, DbError, subscriptions};
use crate::domain::{RequestId, SigningSecret};
use crate::secret_box::SecretBox;

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub batch: u32,
    pub max_in_flight: u32,
    pub per_subscription: u32,
    pub poll_interval: Duration,
    pub disable_after: Duration,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
}

/// Wakes the dispatcher of this process; the API calls it after a commit.
pub type Wake = Arc<Notify>;

pub struct Dispatcher {
    db: Database,
    clock: SharedClock,
    client: WebhookClient,
    secrets: Arc<SecretBox>,
    public_base_url: String,
    settings: DispatchSettings,
    /// Names this process's leases.
    worker_id: String,
    wake: Wake,
    permits: Arc<Semaphore>,
    /// Deliveries leased and not yet recorded, to release on shutdown.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(
        db: Database,
        clock: SharedClock,
        client: WebhookClient,
        secrets: Arc<SecretBox>,
        public_base_url: String,
        settings: DispatchSettings,
        wake: Wake,
    ) -> Self {
        let worker_id = format!(
            "{}-{}",
            std::process::id(),
            &RequestId::generate().as_str()[20..]
        );
        Self {
            permits: Arc::new(Semaphore::new(settings.max_in_flight as usize)),
            db,
            clock,
            client,
            secrets,
            public_base_url,
            settings,
            worker_id,
            wake,
            in_flight: Mutex::default(),
        }
    }

    pub fn client(&self) -> &WebhookClient {
        &self.client
    }

    /// Claims and attempts due deliveries until none is due; returns how many
    /// attempts were made. For tests and one-shot runs: the attempts of one
    /// batch run concurrently, batches one after another.
    pub async fn dispatch_all_pending(&self) -> Result<usize, DbError> {
        let mut attempted = 0;
        loop {
            let claimed = self.claim(self.settings.batch).await?;
            if claimed.is_empty() {
                return Ok(attempted);
            }
            attempted += claimed.len();
            let attempts = claimed.into_iter().map(|c| self.attempt(c));
            futures_util::future::join_all(attempts).await;
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tracing::info!(worker = self.worker_id, "dispatcher started");
        let mut tasks = JoinSet::new();
        loop {
            self.fill(&mut tasks).await;
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = stop.changed() => break,
            }
        }
        let in_flight = tasks.len();
        tracing::info!(
            in_flight,
            "dispatcher stopping; finishing attempts in flight"
        );
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            self.release_in_flight().await;
        }
        tracing::info!(worker = self.worker_id, "dispatcher stopped");
    }

    /// Claims as many deliveries as there are free permits and starts them.
    async fn fill(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        loop {
            let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
            let want = free.min(self.settings.batch);
            if want == 0 {
                return;
            }
            let claimed = match self.claim(want).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "cannot claim deliveries"
                    );
                    return;
                }
            };
            if claimed.is_empty() {
                return;
            }
            for delivery in claimed {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                tasks.spawn(async move {
                    this.attempt(delivery).await;
                    drop(permit);
                });
            }
        }
    }

    async fn claim(&self, want: u32) -> Result<Vec<Claimed>, DbError> {
        let now = self.clock.now_utc();
        let (worker, limits) = (
            self.worker_id.clone(),
            ClaimLimits {
                batch: i64::from(want),
                per_subscription: i64::from(self.settings.per_subscription),
                scan: i64::from(want) * 10,
            },
        );
        let lease_end = to_db(now + self.settings.lease);
        let claimed = self
            .db
            .run(move |conn| {
                let ids = queue::claim(conn, &worker, to_db(now), lease_end, limits)?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                deliveries::load_claimed(conn, &ids)
            })
            .await?;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.extend(claimed.iter().map(|(d, _, _)| d.id.clone()));
        Ok(claimed)
    }

    async fn release_in_flight(&self) {
        let ids: Vec<String> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if ids.is_empty() {
            return;
        }
        let worker = self.worker_id.clone();
        match self
            .db
            .run(move |conn| deliveries::release(conn, &ids, &worker))
            .await
        {
            Ok(released) => tracing::info!(released, "released leases of unfinished attempts"),
            Err(error) => tracing::error!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "cannot release leases; they expire by themselves"
            ),
        }
    }

    /// One attempt: sign, send, record.
    async fn attempt(&self, (delivery, event, subscription): Claimed) {
        let started = self.clock.now_utc();
        let reply = match self.prepare(&event, &subscription, started) {
            Ok((url, headers, body)) => self.client.post(&url, headers, body).await,
            Err(error) => super::client::Reply {
                error: Some(format!("config: {error:#}")),
                ..Default::default()
            },
        };
        let finished = self.clock.now_utc();
        let retry_after = reply
            .retry_after
            .as_deref()
            .and_then(|value| retry::parse_retry_after(value, finished));
        let outcome = retry::classify(reply.status, retry_after);
        let number = delivery.attempts + 1;
        let next_delay = self.settings.retry.next_delay(
            u32::try_from(number).unwrap_or(u32::MAX),
            outcome,
            retry::random_jitter(),
        );
        let update = AttemptUpdate {
            status: match (outcome, next_delay) {
                (Outcome::Delivered, _) => deliveries::DELIVERED,
                (Outcome::Gone, _) | (_, None) => deliveries::FAILED,
                (_, Some(_)) => deliveries::PENDING,
            },
            next_attempt_at: to_db(finished + next_delay.unwrap_or_default()),
            last_status_code: reply.status.map(i32::from),
            last_error: reply.error.clone(),
            delivered_at: (outcome == Outcome::Delivered).then(|| to_db(finished)),
        };
        let attempt = AttemptRow {
            delivery_id: delivery.id.clone(),
            number,
            started_at: to_db(started),
            duration_ms: i64::try_from(reply.elapsed.as_millis()).unwrap_or(i64::MAX),
            status_code: reply.status.map(i32::from),
            error: reply.error.clone(),
            response_excerpt: reply.excerpt.clone(),
        };
        tracing::info!(
            delivery = delivery.id,
            subscription = subscription.id,
            event = event.id,
            attempt = number,
            status = reply.status,
            error = reply.error,
            outcome = ?outcome,
            next = update.status,
            "webhook attempt"
        );
        let disable_after = self.settings.disable_after;
        let subscription_id = subscription.id.clone();
        let recorded = self
            .db
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    deliveries::record_attempt(conn, &attempt, &update)?;
                    let now = to_db(finished);
                    match outcome {
                        Outcome::Delivered => subscriptions::record_success(conn, &subscription_id),
                        Outcome::Gone => subscriptions::disable(
                            conn,
                            &subscription_id,
                            "the endpoint answered 410 Gone",
                            now,
                        ),
                        Outcome::RetryAfter(_) | Outcome::Failed => {
                            let since = subscriptions::record_failure(conn, &subscription_id, now)?;
                            match since {
                                Some(since) if since.assume_utc() + disable_after <= finished => {
                                    subscriptions::disable(
                                        conn,
                                        &subscription_id,
                                        &format!(
                                            "failing without a success since {}",
                                            since.assume_utc()
                                        ),
                                        now,
                                    )
                                }
                                _ => Ok(()),
                            }
                        }
                    }
                })
            })
            .await;
        if let Err(error) = recorded {
            // The lease expires and the delivery is attempted again: at least once.
            tracing::error!(
                delivery = delivery.id,
                error = format!("{:#}", anyhow::Error::from(error)),
                "cannot record a webhook attempt"
            );
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&delivery.id);
    }

    /// The request for one attempt: URL, signed headers, body.
    fn prepare(
        &self,
        event: &EventRow,
        subscription: &SubscriptionRow,
        now: OffsetDateTime,
    ) -> anyhow::Result<(Url, HeaderMap, Vec<u8>)> {
        let url = Url::parse(&subscription.url)?;
        let mut secrets = vec![self.open_secret(&subscription.secret, &subscription.id)?];
        let previous_valid = subscription
            .previous_secret_expires_at
            .is_some_and(|until| until.assume_utc() > now);
        if let (Some(previous), true) = (&subscription.previous_secret, previous_valid) {
            secrets.push(self.open_secret(previous, &subscription.id)?);
        }
        let body = ThinEvent::new(event, &self.public_base_url).to_json();
        let timestamp = now.unix_timestamp();
        let signature = signer::signature_header(&secrets, &event.id, timestamp, &body);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            HeaderName::from_static("webhook-id"),
            HeaderValue::from_str(&event.id)?,
        );
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        headers.insert(
            HeaderName::from_static("webhook-signature"),
            HeaderValue::from_str(&signature)?,
        );
        Ok((url, headers, body))
    }

    fn open_secret(&self, sealed: &str, subscription_id: &str) -> anyhow::Result<SigningSecret> {
        let text = self.secrets.open(sealed, subscription_id)?;
        Ok(SigningSecret::parse(&text)?)
    }
}
