//! Rows as stored. Ids are kept as the strings the domain types produced;
//! timestamps are UTC. Insertable rows write `None` as NULL
//! (`treat_none_as_default_value = false`), which lets them be inserted many
//! per statement on SQLite too.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::schema::{
    clients, comments, deliveries, delivery_attempts, events, idempotency_keys, messages,
    signing_keys, subscriptions, workspaces,
};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct MessageRow {
    pub id: String,
    pub text: String,
    pub created_at: PrimitiveDateTime,
    pub author_client_id: Option<String>,
    /// The sequence number of the message's latest event.
    pub last_sequence: i64,
    pub workspace_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = comments, treat_none_as_default_value = false)]
pub struct CommentRow {
    pub id: String,
    pub message_id: String,
    pub text: String,
    pub created_at: PrimitiveDateTime,
    pub author_client_id: Option<String>,
    pub workspace_id: String,
}

#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = clients)]
pub struct ClientRow {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: String,
    pub created_at: PrimitiveDateTime,
    pub revoked_at: Option<PrimitiveDateTime>,
    pub workspace_id: String,
}

impl std::fmt::Debug for ClientRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key: String,
    pub public_key: String,
    pub created_at: PrimitiveDateTime,
    pub retired_at: Option<PrimitiveDateTime>,
    /// What it signs: `token` or `webhook` (see `signing_keys::Purpose`).
    pub purpose: String,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = subscriptions, treat_none_as_null = true, treat_none_as_default_value = false)]
pub struct SubscriptionRow {
    pub id: String,
    pub owner_client_id: String,
    pub url: String,
    pub event_types: String,
    pub message_id: Option<String>,
    pub description: Option<String>,
    pub enabled: i32,
    pub disabled_reason: Option<String>,
    /// Sealed; see `crate::secret_box`.
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<PrimitiveDateTime>,
    pub failing_since: Option<PrimitiveDateTime>,
    pub created_at: PrimitiveDateTime,
    pub updated_at: PrimitiveDateTime,
    /// `v1`, `v1a` or `v1 v1a`: which Standard Webhooks signatures it gets.
    pub signature_scheme: String,
    /// See [`Format`]; stored as its name.
    pub format: String,
    /// See [`Verification`]; stored as its name.
    pub verification: String,
    /// When a pending handshake is (next) asked.
    pub verification_due_at: Option<PrimitiveDateTime>,
    /// Handshakes asked without an answer since it became pending.
    pub verification_attempts: i32,
    /// Why the last handshake did not verify it.
    pub verification_error: Option<String>,
    pub verified_at: Option<PrimitiveDateTime>,
    /// Requests per minute the receiver allowed; `None`: no limit.
    pub allowed_rate: Option<i32>,
    pub workspace_id: String,
    /// Its last successful delivery, to the minute.
    pub last_success_at: Option<PrimitiveDateTime>,
}

impl SubscriptionRow {
    /// Whether its webhooks carry an HMAC (`v1`) signature.
    pub fn signs_v1(&self) -> bool {
        self.signature_scheme.split(' ').any(|s| s == "v1")
    }

    /// Whether its webhooks carry an Ed25519 (`v1a`) signature.
    pub fn signs_v1a(&self) -> bool {
        self.signature_scheme.split(' ').any(|s| s == "v1a")
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled != 0
    }

    pub fn format(&self) -> Format {
        Format::parse(&self.format).unwrap_or_default()
    }

    /// Whether its deliveries may be attempted: enabled, and verified if
    /// its format asks for the handshake.
    pub fn is_deliverable(&self) -> bool {
        self.is_enabled() && Verification::allows_delivery(&self.verification)
    }
}

/// The shape of a subscription's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The thin JSON body, signed per Standard Webhooks.
    #[default]
    StandardWebhooks,
    /// A CloudEvent, structured mode (`application/cloudevents+json`).
    CloudEvents,
    /// A CloudEvent, binary mode: attributes in `ce-` headers, the data as the body.
    CloudEventsBinary,
}

impl Format {
    pub const NAMES: [&str; 3] = ["standard-webhooks", "cloudevents", "cloudevents-binary"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "standard-webhooks" => Some(Self::StandardWebhooks),
            "cloudevents" => Some(Self::CloudEvents),
            "cloudevents-binary" => Some(Self::CloudEventsBinary),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// CloudEvents receivers consent first (the abuse-protection handshake).
    pub fn needs_handshake(self) -> bool {
        self != Self::StandardWebhooks
    }

    /// The verification a subscription of this format starts with.
    pub fn initial_verification(self) -> Verification {
        match self.needs_handshake() {
            true => Verification::Pending,
            false => Verification::NotRequired,
        }
    }
}

/// Where a subscription stands in the CloudEvents abuse-protection handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Standard Webhooks: no handshake.
    NotRequired,
    /// To ask (again); its deliveries are held meanwhile.
    Pending,
    /// The receiver consented.
    Verified,
    /// The receiver answered without consent; held until re-verified on request.
    Refused,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRequired => "not_required",
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Refused => "refused",
        }
    }

    /// Whether a subscription in this (stored) state may be delivered to.
    pub fn allows_delivery(stored: &str) -> bool {
        stored == Self::NotRequired.as_str() || stored == Self::Verified.as_str()
    }
}

impl std::fmt::Debug for SubscriptionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionRow")
            .field("id", &self.id)
            .field("owner_client_id", &self.owner_client_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = events, treat_none_as_default_value = false)]
pub struct EventRow {
    pub id: String,
    pub event_type: String,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_path: String,
    pub message_id: String,
    pub sequence: i64,
    pub created_at: PrimitiveDateTime,
    /// Place in the event feed, taken from the feed counter as the last step
    /// of the recording transaction.
    pub feed_position: Option<i64>,
    /// The W3C `traceparent` of the request that created the event.
    pub traceparent: Option<String>,
    pub workspace_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = deliveries, treat_none_as_default_value = false)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub subscription_id: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: PrimitiveDateTime,
    pub locked_until: Option<PrimitiveDateTime>,
    pub locked_by: Option<String>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<PrimitiveDateTime>,
    pub fetched_at: Option<PrimitiveDateTime>,
    pub created_at: PrimitiveDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = delivery_attempts, treat_none_as_default_value = false)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub number: i32,
    pub started_at: PrimitiveDateTime,
    pub duration_ms: i64,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// The response the first request with an `Idempotency-Key` got.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys, treat_none_as_default_value = false)]
pub struct IdempotencyRow {
    pub client_id: String,
    /// Method and route pattern: `POST /messages/{messageId}/comments`.
    pub route: String,
    pub idempotency_key: String,
    /// SHA-256 (hex) of the request's method, path and body.
    pub fingerprint: String,
    pub status: i32,
    pub location: Option<String>,
    pub content_type: String,
    /// Sealed; see `crate::secret_box` (a new subscription's body holds its secret).
    pub body: String,
    pub created_at: PrimitiveDateTime,
}

impl std::fmt::Debug for IdempotencyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyRow")
            .field("client_id", &self.client_id)
            .field("route", &self.route)
            .field("status", &self.status)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A tenant: its clients and everything they write and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = workspaces)]
pub struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub created_at: PrimitiveDateTime,
    /// Subscriptions its clients may have together; `None`: the default.
    pub max_subscriptions: Option<i32>,
    /// API requests per second of its clients together; `None`: the default.
    pub api_per_second: Option<i32>,
    pub api_burst: Option<i32>,
    /// Days its events are kept; `None`: the default.
    pub retention_days: Option<i32>,
    /// Its events up to this feed position have been pruned.
    pub pruned_through: i64,
}
