//! One attempt: sign the thin body, send it, and decide what the answer
//! means for the delivery — with no database connection held.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use time::{OffsetDateTime, PrimitiveDateTime};
use tracing::Instrument;
use url::Url;

use super::client::{Reply, WebhookClient};
use super::handshake;
use super::payload::{self, CloudEvent, ThinEvent};
use super::retry::{self, Outcome, RetryPolicy};
use super::signer;
use super::webhook_keys::{WebhookKey, WebhookKeys};
use crate::clock::{SharedClock, to_db};
use crate::db::deliveries::{self, AttemptOutcome, AttemptUpdate, Leased, Verdict};
use crate::db::models::{AttemptRow, EventRow, Format, SubscriptionRow};
use crate::domain::{EventId, SigningSecret};
use crate::metrics::Metrics;
use crate::secret_box::SecretBox;
use crate::trace::TraceParent;

/// Everything an attempt needs besides the delivery itself.
#[derive(Debug, Clone)]
pub struct Attempter {
    pub client: WebhookClient,
    pub secrets: Arc<SecretBox>,
    pub public_base_url: String,
    pub retry: RetryPolicy,
    pub clock: SharedClock,
    pub endpoints: Arc<Endpoints>,
    pub metrics: Arc<Metrics>,
    /// The gateway's Ed25519 keys, for `v1a` signatures.
    pub webhook_keys: Arc<WebhookKeys>,
    /// `WebHook-Request-Origin`, sent with every CloudEvent as the
    /// handshake promised.
    pub origin: Arc<str>,
}

/// What attempts need of a subscription, derived once per version of it
/// rather than at every attempt: its URL parsed and its secrets opened.
#[derive(Debug, Default)]
pub struct Endpoints(RwLock<HashMap<String, Arc<Endpoint>>>);

struct Endpoint {
    /// The version of the subscription this was derived from.
    updated_at: PrimitiveDateTime,
    url: Url,
    secret: SigningSecret,
    /// The secret before the last rotation, and until when it signs too.
    previous: Option<(SigningSecret, OffsetDateTime)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Beyond this many subscriptions the cache starts over.
    const CAPACITY: usize = 10_000;

    fn get(
        &self,
        subscription: &SubscriptionRow,
        secrets: &SecretBox,
    ) -> anyhow::Result<Arc<Endpoint>> {
        let cached = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&subscription.id)
            .filter(|e| e.updated_at == subscription.updated_at)
            .cloned();
        if let Some(endpoint) = cached {
            return Ok(endpoint);
        }
        let open = |sealed: &str| -> anyhow::Result<SigningSecret> {
            Ok(SigningSecret::parse(
                &secrets.open(sealed, &subscription.id)?,
            )?)
        };
        let previous = match (
            &subscription.previous_secret,
            subscription.previous_secret_expires_at,
        ) {
            (Some(sealed), Some(until)) => Some((open(sealed)?, until.assume_utc())),
            _ => None,
        };
        let endpoint = Arc::new(Endpoint {
            updated_at: subscription.updated_at,
            url: Url::parse(&subscription.url)?,
            secret: open(&subscription.secret)?,
            previous,
        });
        let mut cache = self.0.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(subscription.id.clone(), endpoint.clone());
        Ok(endpoint)
    }
}

impl Attempter {
    /// Sends `subscription` a `webhook.test` event now, signed and shaped
    /// as its deliveries are, but recorded nowhere: no event in the feed,
    /// no delivery, no retry. Its link is the subscription itself, which
    /// the owner's token can fetch. Returns the event's id and the answer.
    pub async fn send_test(&self, subscription: &SubscriptionRow) -> (String, Reply) {
        let now = self.clock.now_utc();
        let event = EventRow {
            id: EventId::generate().to_string(),
            event_type: payload::TEST_EVENT_TYPE.to_owned(),
            resource_type: "subscription".to_owned(),
            resource_id: subscription.id.clone(),
            resource_path: format!("/subscriptions/{}", subscription.id),
            message_id: String::new(),
            sequence: 0,
            created_at: to_db(now),
            feed_position: None,
            traceparent: None,
            workspace_id: subscription.workspace_id.clone(),
        };
        let reply = self.send(&event, subscription, now, None).await;
        (event.id, reply)
    }

    /// Signs `event` for `subscription` at `now` and posts it; a request
    /// that cannot be made (a secret that does not open, say) is an answer
    /// with the reason, as a failed connection is.
    async fn send(
        &self,
        event: &EventRow,
        subscription: &SubscriptionRow,
        now: OffsetDateTime,
        trace: Option<TraceParent>,
    ) -> Reply {
        let key = match subscription.signs_v1a() {
            true => Some(self.webhook_keys.current().await),
            false => None,
        }
        .transpose();
        let prepared =
            key.and_then(|key| self.prepare(event, subscription, now, trace, key.as_deref()));
        match prepared {
            Ok((url, headers, body)) => self.client.post(&url, headers, body).await,
            Err(error) => Reply {
                error: Some(format!("config: {error:#}")),
                ..Reply::default()
            },
        }
    }

    /// Makes the attempt and returns what to record.
    pub async fn attempt(&self, delivery: &Leased) -> AttemptOutcome {
        let (event, subscription) = (&*delivery.event, &*delivery.subscription);
        let started = self.clock.now_utc();
        let trace = event.traceparent.as_deref().and_then(TraceParent::parse);
        let (span, sent_trace) = attempt_span(delivery, trace);
        let reply = self
            .send(event, subscription, started, sent_trace)
            .instrument(span)
            .await;
        let finished = self.clock.now_utc();
        let retry_after = reply
            .retry_after
            .as_deref()
            .and_then(|value| retry::parse_retry_after(value, finished));
        let outcome = retry::classify(reply.status, retry_after);
        let number = delivery.attempts + 1;
        let next_delay = self.retry.next_delay(
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
            last_error: reply.error.as_deref().map(storable),
            delivered_at: (outcome == Outcome::Delivered).then(|| to_db(finished)),
        };
        self.count(delivery, &update, &reply, finished);
        if outcome == Outcome::Delivered {
            tracing::debug!(
                delivery = delivery.delivery_id,
                subscription = subscription.id,
                event = event.id,
                attempt = number,
                status = reply.status,
                "webhook delivered"
            );
        } else {
            tracing::warn!(
                delivery = delivery.delivery_id,
                subscription = subscription.id,
                event = event.id,
                attempt = number,
                status = reply.status,
                error = reply.error,
                outcome = ?outcome,
                next = update.status,
                trace_id = trace.map(|t| t.trace_id_hex()),
                "webhook attempt failed"
            );
        }
        AttemptOutcome {
            subscription_id: subscription.id.clone(),
            finished_at: to_db(finished),
            attempt: AttemptRow {
                delivery_id: delivery.delivery_id.clone(),
                number,
                started_at: to_db(started),
                duration_ms: i64::try_from(reply.elapsed.as_millis()).unwrap_or(i64::MAX),
                status_code: reply.status.map(i32::from),
                error: reply.error.as_deref().map(storable),
                response_excerpt: reply.excerpt.as_deref().map(storable),
            },
            update,
            verdict: match outcome {
                Outcome::Delivered => Verdict::Delivered,
                Outcome::Gone => Verdict::Gone,
                Outcome::RetryAfter(_) | Outcome::Failed => Verdict::Failed,
            },
            timed_out: reply.timed_out,
        }
    }

    fn count(
        &self,
        delivery: &Leased,
        update: &AttemptUpdate,
        reply: &Reply,
        finished: OffsetDateTime,
    ) {
        let metrics = &self.metrics;
        metrics
            .attempt_duration
            .observe(reply.elapsed.as_secs_f64());
        metrics.attempt(match update.status {
            deliveries::DELIVERED => "delivered",
            deliveries::PENDING => "retry",
            _ => "failed",
        });
        if update.status == deliveries::DELIVERED && !delivery.delivered_before {
            let delay = finished - delivery.event.created_at.assume_utc();
            metrics.end_to_end.observe(delay.as_seconds_f64().max(0.0));
        }
    }

    /// The request for one attempt: URL, signed headers, body.
    fn prepare(
        &self,
        event: &EventRow,
        subscription: &SubscriptionRow,
        now: OffsetDateTime,
        trace: Option<TraceParent>,
        key: Option<&WebhookKey>,
    ) -> anyhow::Result<(Url, HeaderMap, Vec<u8>)> {
        let endpoint = self.endpoints.get(subscription, &self.secrets)?;
        let mut secrets = Vec::with_capacity(2);
        if subscription.signs_v1() {
            secrets.push(&endpoint.secret);
            if let Some((previous, until)) = &endpoint.previous
                && *until > now
            {
                secrets.push(previous);
            }
        }
        let mut headers = HeaderMap::new();
        let (content_type, body) = match subscription.format() {
            Format::StandardWebhooks => (
                "application/json",
                ThinEvent::new(event, &self.public_base_url).to_json(),
            ),
            Format::CloudEvents => (
                "application/cloudevents+json",
                CloudEvent::new(event, &self.public_base_url).to_json(),
            ),
            Format::CloudEventsBinary => {
                let (attributes, data) = CloudEvent::new(event, &self.public_base_url).to_binary();
                for (name, value) in attributes {
                    headers.insert(
                        HeaderName::from_static(name),
                        HeaderValue::from_str(&value)?,
                    );
                }
                ("application/json", data)
            }
        };
        if subscription.format().needs_handshake() {
            headers.insert(
                handshake::REQUEST_ORIGIN,
                HeaderValue::from_str(&self.origin)?,
            );
        }
        let timestamp = now.unix_timestamp();
        let mut signature = signer::signature_header(secrets, &event.id, timestamp, &body);
        if let Some(key) = key {
            if !signature.is_empty() {
                signature.push(' ');
            }
            signature.push_str(&key.sign(&event.id, timestamp, &body));
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
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
        if let Some(key) = key {
            // Which published key (`/.well-known/webhook-keys.json`) verifies the `v1a` signature.
            headers.insert(
                HeaderName::from_static("webhook-key-id"),
                HeaderValue::from_str(&key.kid)?,
            );
        }
        if let Some(trace) = trace {
            headers.insert(
                HeaderName::from_static("traceparent"),
                HeaderValue::from_str(&trace.to_string())?,
            );
        }
        Ok((endpoint.url.clone(), headers, body))
    }
}

/// Each attempt is a span of its event's trace: when spans are exported,
/// one that is exported (and named by the `traceparent` sent); otherwise a
/// span id of its own, with no span to record.
fn attempt_span(
    delivery: &Leased,
    trace: Option<TraceParent>,
) -> (tracing::Span, Option<TraceParent>) {
    #[cfg(feature = "otlp")]
    if crate::otlp::exporting() {
        let span = tracing::info_span!(
            "webhook attempt",
            delivery = delivery.delivery_id,
            subscription = delivery.subscription.id,
            event = delivery.event.id,
            attempt = delivery.attempts + 1,
        );
        if let Some(parent) = &trace {
            crate::otlp::continue_trace(&span, parent);
        }
        let own = crate::otlp::context_of(&span);
        return (span, own.or(trace.map(|t| t.child())));
    }
    let _ = delivery;
    (tracing::Span::none(), trace.map(|t| t.child()))
}

/// The longest text kept from a receiver's answer (an excerpt, an error).
const MAX_STORED_TEXT: usize = 8 * 1024;

/// Text a receiver chose, made safe to store in any `TEXT` column: no NUL
/// (PostgreSQL refuses it, which would fail the whole record), valid UTF-8
/// (it is a `String`), and at most [`MAX_STORED_TEXT`] bytes.
fn storable(text: &str) -> String {
    let mut kept: String = text.chars().filter(|&c| c != '\0').collect();
    if kept.len() > MAX_STORED_TEXT {
        let mut end = MAX_STORED_TEXT;
        while !kept.is_char_boundary(end) {
            end -= 1;
        }
        kept.truncate(end);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_has_no_nul_and_a_bounded_length() {
        assert_eq!(storable("200 ok\0"), "200 ok");
        assert_eq!(storable("a\0b\0"), "ab");
        let long = "é".repeat(MAX_STORED_TEXT);
        let kept = storable(&long);
        assert!(kept.len() <= MAX_STORED_TEXT);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
