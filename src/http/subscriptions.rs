//! Webhook subscriptions, their secrets and their delivery logs. Every
//! subscription belongs to the client that made it; to anyone else it does
//! not exist (404, never 403).

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, PrimitiveDateTime};

use super::idempotency::{self, Begun, Idempotent};
use super::pagination::{Page, PageParams};
use super::{AppState, protected, resource};
use crate::auth::{Caller, Scope, SubscriptionsManage};
use crate::clock::{SINCE_FORMAT, db_now, parse_since, to_db};
use crate::db::deliveries::REPLAY_LIMIT;
use crate::db::models::{AttemptRow, DeliveryRow, EventRow, Format, SubscriptionRow, Verification};
use crate::db::subscriptions::{Owner, VerificationColumns};
use crate::db::{DbConnection, deliveries, messages as message_repo, queue, subscriptions as repo};
use crate::domain::{
    DeliveryId, Description, EventTypes, MessageId, SigningSecret, SubscriptionId, WebhookUrl,
};
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/subscriptions", "GET, POST")
            .route(protected(web::post().to(create)))
            .route(protected(web::get().to(list))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}", "DELETE, GET, PATCH")
            .route(protected(web::get().to(get)))
            .route(protected(web::patch().to(update)))
            .route(protected(web::delete().to(delete))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}/secret/rotate", "POST")
            .route(protected(web::post().to(rotate))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}/verify", "POST")
            .route(protected(web::post().to(verify))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}/test", "POST")
            .route(protected(web::post().to(send_test))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}/deliveries", "GET")
            .route(protected(web::get().to(deliveries_log))),
    )
    .service(
        resource("/subscriptions/{subscriptionId}/replay", "POST")
            .route(protected(web::post().to(replay))),
    )
    .service(resource("/deliveries", "GET").route(protected(web::get().to(all_deliveries))))
    .service(resource("/deliveries/stats", "GET").route(protected(web::get().to(delivery_stats))))
    .service(
        resource("/deliveries/{deliveryId}/retry", "POST").route(protected(web::post().to(retry))),
    )
    .service(resource("/.well-known/webhook-keys.json", "GET").route(web::get().to(webhook_keys)));
}

/// The public keys that verify `v1a` webhook signatures, as a JWK Set: a
/// webhook's `webhook-key-id` header names its key.
async fn webhook_keys(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let keys = state.webhooks.keys.published().await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(serde_json::json!({ "keys": keys })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscription {
    url: String,
    event_types: Vec<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    signature_scheme: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSubscription {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    description: Option<String>,
    signature_scheme: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Subscription {
    id: String,
    url: String,
    event_types: Vec<String>,
    message_id: Option<String>,
    description: Option<String>,
    enabled: bool,
    disabled_reason: Option<String>,
    signature_scheme: String,
    format: String,
    verification: VerificationView,
    health: Health,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

/// How its endpoint has been answering.
#[derive(Debug, Serialize)]
struct Health {
    /// Its last successful delivery, to the minute.
    #[serde(with = "time::serde::rfc3339::option")]
    last_success_at: Option<OffsetDateTime>,
    /// Its deliveries have failed since then, without a success.
    #[serde(with = "time::serde::rfc3339::option")]
    failing_since: Option<OffsetDateTime>,
}

/// Where the subscription stands in the CloudEvents handshake.
#[derive(Debug, Serialize)]
struct VerificationView {
    state: String,
    /// When the receiver consented.
    #[serde(with = "time::serde::rfc3339::option")]
    verified_at: Option<OffsetDateTime>,
    /// Requests per minute the receiver allowed; none: no limit.
    allowed_rate: Option<i32>,
    /// Why the last handshake did not verify it.
    error: Option<String>,
    /// When a pending handshake is asked next.
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
}

impl From<SubscriptionRow> for Subscription {
    fn from(row: SubscriptionRow) -> Self {
        Self {
            enabled: row.is_enabled(),
            event_types: EventTypes::from_stored(&row.event_types)
                .map(|types| types.names().into_iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            id: row.id,
            url: row.url,
            message_id: row.message_id,
            description: row.description,
            disabled_reason: row.disabled_reason,
            signature_scheme: row.signature_scheme,
            format: row.format,
            verification: VerificationView {
                next_attempt_at: (row.verification == Verification::Pending.as_str())
                    .then(|| row.verification_due_at.map(PrimitiveDateTime::assume_utc))
                    .flatten(),
                state: row.verification,
                verified_at: row.verified_at.map(PrimitiveDateTime::assume_utc),
                allowed_rate: row.allowed_rate,
                error: row.verification_error,
            },
            health: Health {
                last_success_at: row.last_success_at.map(PrimitiveDateTime::assume_utc),
                failing_since: row.failing_since.map(PrimitiveDateTime::assume_utc),
            },
            created_at: row.created_at.assume_utc(),
            updated_at: row.updated_at.assume_utc(),
        }
    }
}

/// A new subscription with the only copy of its secret.
#[derive(Debug, Serialize)]
pub struct CreatedSubscription {
    #[serde(flatten)]
    subscription: Subscription,
    /// Shown once: store it to verify signatures.
    secret: String,
}

/// A subscription about to be stored, and its secret in the clear.
#[derive(Debug)]
pub struct NewSubscription {
    pub row: SubscriptionRow,
    pub secret: SigningSecret,
}

impl NewSubscription {
    pub fn into_response(self) -> CreatedSubscription {
        CreatedSubscription {
            secret: self.secret.expose(),
            subscription: self.row.into(),
        }
    }
}

fn validation(field: &str, error: impl std::fmt::Display) -> ApiError {
    ApiError::Validation(format!("`{field}` {error}"))
}

/// Parses a webhook URL and vets where it leads (the SSRF guard).
pub async fn vet_url(state: &AppState, field: &str, url: &str) -> Result<WebhookUrl, ApiError> {
    let url = WebhookUrl::parse(url).map_err(|e| validation(field, e))?;
    state
        .webhooks
        .guard
        .vet_url(url.as_url())
        .await
        .map_err(|blocked| {
            // The client is told why, not where its host resolved to.
            tracing::debug!(url = %url, refused = blocked.for_operator(), "webhook URL refused");
            validation(field, format!("is not allowed: {blocked}"))
        })?;
    Ok(url)
}

/// `v1` (HMAC-SHA256 with the subscription's secret), `v1a` (Ed25519 with
/// the gateway's published key) or both, space-separated, as stored.
fn parse_signature_scheme(value: &str) -> Result<&'static str, ApiError> {
    let mut schemes: Vec<&str> = value.split(' ').collect();
    schemes.sort_unstable();
    match schemes.as_slice() {
        ["v1"] => Ok("v1"),
        ["v1a"] => Ok("v1a"),
        ["v1", "v1a"] => Ok("v1 v1a"),
        _ => Err(validation(
            "signature_scheme",
            "must be `v1`, `v1a` or `v1 v1a`",
        )),
    }
}

fn parse_format(value: &str) -> Result<Format, ApiError> {
    Format::parse(value).ok_or_else(|| {
        validation(
            "format",
            "must be `standard-webhooks`, `cloudevents` or `cloudevents-binary`",
        )
    })
}

fn parse_event_types(names: &[String]) -> Result<EventTypes, ApiError> {
    EventTypes::parse(names.iter().map(String::as_str)).map_err(|e| validation("event_types", e))
}

/// A blank description stores none.
fn parse_description(description: String) -> Result<Option<String>, ApiError> {
    Description::parse(description)
        .map(|parsed| parsed.map(Description::into_string))
        .map_err(|e| validation("description", e))
}

/// What a new subscription is to be, parsed and vetted.
#[derive(Debug)]
pub struct Wanted<'a> {
    pub url: &'a WebhookUrl,
    pub event_types: &'a EventTypes,
    pub message_id: Option<&'a MessageId>,
    pub description: Option<String>,
    pub signature_scheme: &'a str,
    pub format: Format,
}

/// Builds a subscription with a fresh secret, sealed for storage.
pub fn new_subscription(state: &AppState, owner: &Owner, wanted: Wanted<'_>) -> NewSubscription {
    let Wanted {
        url,
        event_types,
        message_id,
        description,
        signature_scheme,
        format,
    } = wanted;
    let id = SubscriptionId::generate();
    let secret = SigningSecret::generate();
    let now = db_now(&*state.clock);
    let verification = VerificationColumns::initial(format, now);
    let row = SubscriptionRow {
        secret: state.webhooks.secrets.seal(&secret.expose(), id.as_str()),
        id: id.to_string(),
        owner_client_id: owner.client.to_string(),
        url: url.to_string(),
        event_types: event_types.to_stored(),
        message_id: message_id.map(ToString::to_string),
        description,
        enabled: 1,
        disabled_reason: None,
        previous_secret: None,
        previous_secret_expires_at: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
        signature_scheme: signature_scheme.to_owned(),
        format: format.as_str().to_owned(),
        verification: verification.verification,
        verification_due_at: verification.verification_due_at,
        verification_attempts: verification.verification_attempts,
        verification_error: verification.verification_error,
        verified_at: verification.verified_at,
        allowed_rate: verification.allowed_rate,
        workspace_id: owner.workspace.to_string(),
        last_success_at: None,
    };
    NewSubscription { row, secret }
}

#[derive(Debug, Deserialize)]
struct SubscriptionPath {
    #[serde(rename = "subscriptionId")]
    id: SubscriptionId,
}

#[derive(Debug, Deserialize)]
struct DeliveryPath {
    #[serde(rename = "deliveryId")]
    id: DeliveryId,
}

fn not_found(id: &SubscriptionId) -> ApiError {
    ApiError::not_found("subscription", id)
}

async fn create(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    body: Idempotent<CreateSubscription>,
) -> Result<HttpResponse, ApiError> {
    let Idempotent { body, key } = body;
    if body.message_id.is_none() {
        // Without a message filter it is sent every matching event's id and
        // time: the event feed, pushed, so it needs the feed's scope too.
        caller.require(Scope::EventsRead)?;
    }
    let once = match idempotency::begin(&state, &caller.client_id, key).await? {
        Begun::Run(once) => once,
        Begun::Replay(response) => return Ok(response),
    };
    let event_types = parse_event_types(&body.event_types)?;
    let message_id = body
        .message_id
        .as_deref()
        .map(MessageId::parse)
        .transpose()
        .map_err(|e| validation("message_id", e))?;
    let description = body
        .description
        .map(parse_description)
        .transpose()?
        .flatten();
    let signature_scheme = body
        .signature_scheme
        .as_deref()
        .map_or(Ok("v1"), parse_signature_scheme)?;
    let format = body
        .format
        .as_deref()
        .map_or(Ok(Format::default()), parse_format)?;
    let url = vet_url(&state, "url", &body.url).await?;
    let owner = caller.owner();
    let new = new_subscription(
        &state,
        &owner,
        Wanted {
            url: &url,
            event_types: &event_types,
            message_id: message_id.as_ref(),
            description,
            signature_scheme,
            format,
        },
    );
    let row = new.row.clone();
    let location = state.links.absolute(&format!("/subscriptions/{}", row.id));
    let (created, stored) = once.created(&state, location, &new.into_response())?;
    let quota = state.webhooks.quota;
    // Counted and inserted by the one writer, so concurrent requests of this
    // process cannot pass the quota together.
    state
        .writer
        .run(move |conn| {
            if let Some(message_id) = &message_id
                && !message_repo::message_exists(conn, &owner.workspace, message_id)?
            {
                return Ok(Err(validation("message_id", "names no existing message")));
            }
            let message_id = message_id.as_ref().map(MessageId::as_str);
            if let Some(refusal) = repo::quota_refusal(conn, &owner, message_id, quota)? {
                return Ok(Err(ApiError::QuotaExceeded(refusal)));
            }
            repo::insert(conn, &row)?;
            crate::db::idempotency::store_all(conn, &stored)?;
            Ok(Ok(()))
        })
        .await??;
    Ok(created)
}

async fn list(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    params: web::Query<PageParams>,
) -> Result<web::Json<Page<Subscription>>, ApiError> {
    let limit = params.limit()?;
    let after = params.after(SubscriptionId::parse)?;
    let owner = caller.owner();
    let rows = state
        .db
        .run(move |conn| {
            let after = after.as_ref().map(SubscriptionId::as_str);
            repo::list_owned(conn, &owner, after, i64::from(limit.get()) + 1)
        })
        .await?;
    Ok(web::Json(
        Page::from_rows(rows, limit, &params, |row| row.id.clone()).map(Subscription::from),
    ))
}

async fn find(
    state: &AppState,
    owner: Owner,
    id: &SubscriptionId,
) -> Result<SubscriptionRow, ApiError> {
    let lookup = id.to_string();
    state
        .db
        .run(move |conn| repo::find_owned(conn, &lookup, &owner))
        .await?
        .ok_or_else(|| not_found(id))
}

async fn get(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
) -> Result<web::Json<Subscription>, ApiError> {
    Ok(web::Json(
        find(&state, caller.owner(), &path.id).await?.into(),
    ))
}

async fn update(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
    body: web::Json<UpdateSubscription>,
) -> Result<web::Json<Subscription>, ApiError> {
    let body = body.into_inner();
    let event_types = body
        .event_types
        .as_deref()
        .map(parse_event_types)
        .transpose()?;
    let description = body.description.map(parse_description).transpose()?;
    let signature_scheme = body
        .signature_scheme
        .as_deref()
        .map(parse_signature_scheme)
        .transpose()?;
    let format = body.format.as_deref().map(parse_format).transpose()?;
    let url = match &body.url {
        Some(url) => Some(vet_url(&state, "url", url).await?),
        None => None,
    };
    let patch = repo::Patch {
        url: url.map(|url| url.to_string()),
        event_types: event_types.map(|types| types.to_stored()),
        description,
        enabled: body.enabled,
        signature_scheme: signature_scheme.map(str::to_owned),
        format,
    };
    let (id, owner, now) = (path.id.to_string(), caller.owner(), db_now(&*state.clock));
    let row = state
        .writer
        .run(move |conn| repo::patch_owned(conn, &id, &owner, &patch, now))
        .await?
        .ok_or_else(|| not_found(&path.id))?;
    if body.enabled == Some(true) {
        // Deliveries held while it was disabled are due again.
        state.webhooks.wake.notify_one();
    }
    Ok(web::Json(row.into()))
}

/// Asks a CloudEvents receiver for consent again, now, and answers with the
/// subscription as the answer left it.
async fn verify(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
) -> Result<web::Json<Subscription>, ApiError> {
    let row = find(&state, caller.owner(), &path.id).await?;
    if !row.format().needs_handshake() {
        return Err(ApiError::Conflict(format!(
            "the subscription's format is `{}`: only CloudEvents subscriptions are verified",
            row.format
        )));
    }
    let row = state
        .webhooks
        .handshaker
        .verify_now(&state.writer, &state.clock, &row)
        .await?
        .ok_or_else(|| not_found(&path.id))?;
    if row.verification == Verification::Verified.as_str() {
        // Its held deliveries are due.
        state.webhooks.wake.notify_one();
    }
    Ok(web::Json(row.into()))
}

/// What the endpoint answered a test event.
#[derive(Debug, Serialize)]
struct TestSent {
    event_id: String,
    #[serde(rename = "type")]
    event_type: &'static str,
    /// It answered 2xx.
    delivered: bool,
    status_code: Option<u16>,
    duration_ms: u64,
    response_excerpt: Option<String>,
    error: Option<String>,
}

/// Sends the subscription a `webhook.test` event now and answers with what
/// its endpoint said. Nothing is recorded or retried: it is for checking an
/// endpoint, enabled or not.
async fn send_test(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
) -> Result<web::Json<TestSent>, ApiError> {
    let row = find(&state, caller.owner(), &path.id).await?;
    if row.format().needs_handshake() && row.verification != Verification::Verified.as_str() {
        return Err(ApiError::Conflict(
            "the receiver has not consented to CloudEvents from this gateway yet: \
             POST /subscriptions/{id}/verify first"
                .into(),
        ));
    }
    let (event_id, reply) = state.webhooks.attempter.send_test(&row).await;
    Ok(web::Json(TestSent {
        event_id,
        event_type: crate::delivery::payload::TEST_EVENT_TYPE,
        delivered: reply
            .status
            .is_some_and(|status| (200..300).contains(&status)),
        status_code: reply.status,
        duration_ms: u64::try_from(reply.elapsed.as_millis()).unwrap_or(u64::MAX),
        response_excerpt: reply.excerpt,
        error: reply.error,
    }))
}

async fn delete(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
) -> Result<HttpResponse, ApiError> {
    let (id, owner) = (path.id.to_string(), caller.owner());
    let deleted = state
        .writer
        .run(move |conn| repo::delete_owned(conn, &id, &owner))
        .await?;
    if !deleted {
        return Err(not_found(&path.id));
    }
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize)]
struct RotatedSecret {
    /// The new secret, shown once.
    secret: String,
    /// Until then the previous secret signs too (a second `v1,` signature).
    #[serde(with = "time::serde::rfc3339")]
    previous_secret_expires_at: OffsetDateTime,
}

async fn rotate(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
) -> Result<web::Json<RotatedSecret>, ApiError> {
    let now = state.clock.now_utc();
    let expires = now + state.webhooks.secret_overlap;
    let secret = SigningSecret::generate();
    let (id, owner, sealer) = (
        path.id.to_string(),
        caller.owner(),
        state.webhooks.secrets.clone(),
    );
    let plain = secret.expose();
    let rotated = state
        .writer
        .run(move |conn| {
            // Another process may rotate between the read and the write:
            // then read again and rotate what it left.
            for _ in 0..3 {
                let Some(row) = repo::find_owned(conn, &id, &owner)? else {
                    return Ok(Some(false));
                };
                let sealed = sealer.seal(&plain, &id);
                if repo::replace_secret(
                    conn,
                    &id,
                    &owner,
                    &row.secret,
                    &sealed,
                    to_db(expires),
                    to_db(now),
                )? {
                    return Ok(Some(true));
                }
            }
            Ok(None)
        })
        .await?;
    match rotated {
        Some(true) => Ok(web::Json(RotatedSecret {
            secret: secret.expose(),
            previous_secret_expires_at: expires,
        })),
        Some(false) => Err(not_found(&path.id)),
        None => Err(ApiError::Conflict(
            "the secret is being rotated by another request; try again".into(),
        )),
    }
}

#[derive(Debug, Serialize)]
struct Attempt {
    number: i32,
    #[serde(with = "time::serde::rfc3339")]
    started_at: OffsetDateTime,
    duration_ms: i64,
    status_code: Option<i32>,
    error: Option<String>,
    response_excerpt: Option<String>,
}

#[derive(Debug, Serialize)]
struct Delivery {
    id: String,
    event_id: String,
    event_type: String,
    subscription_id: String,
    status: String,
    attempt_count: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    next_attempt_at: Option<OffsetDateTime>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    delivered_at: Option<OffsetDateTime>,
    /// When the subscriber first fetched the resource after delivery.
    #[serde(with = "time::serde::rfc3339::option")]
    fetched_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    attempts: Vec<Attempt>,
}

fn delivery_json(delivery: DeliveryRow, event: EventRow, attempts: Vec<AttemptRow>) -> Delivery {
    Delivery {
        next_attempt_at: (delivery.status == deliveries::PENDING)
            .then(|| delivery.next_attempt_at.assume_utc()),
        id: delivery.id,
        event_id: event.id,
        event_type: event.event_type,
        subscription_id: delivery.subscription_id,
        status: delivery.status,
        attempt_count: delivery.attempts,
        last_status_code: delivery.last_status_code,
        last_error: delivery.last_error,
        delivered_at: delivery.delivered_at.map(|t| t.assume_utc()),
        fetched_at: delivery.fetched_at.map(|t| t.assume_utc()),
        created_at: delivery.created_at.assume_utc(),
        attempts: attempts
            .into_iter()
            .map(|a| Attempt {
                number: a.number,
                started_at: a.started_at.assume_utc(),
                duration_ms: a.duration_ms,
                status_code: a.status_code,
                error: a.error,
                response_excerpt: a.response_excerpt,
            })
            .collect(),
    }
}

/// Attaches each delivery's attempts.
fn with_attempts(
    conn: &mut DbConnection,
    rows: Vec<(DeliveryRow, EventRow)>,
) -> diesel::QueryResult<Vec<Delivery>> {
    let ids: Vec<String> = rows.iter().map(|(d, _)| d.id.clone()).collect();
    let mut by_delivery: HashMap<String, Vec<AttemptRow>> = HashMap::new();
    for attempt in deliveries::attempts_of(conn, &ids)? {
        by_delivery
            .entry(attempt.delivery_id.clone())
            .or_default()
            .push(attempt);
    }
    Ok(rows
        .into_iter()
        .map(|(delivery, event)| {
            let attempts = by_delivery.remove(&delivery.id).unwrap_or_default();
            delivery_json(delivery, event, attempts)
        })
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryParams {
    status: Option<String>,
    limit: Option<u64>,
    after: Option<String>,
}

/// `status` as stored, or a 400 naming the ones there are.
fn status_filter(status: Option<String>) -> Result<Option<String>, ApiError> {
    match status {
        Some(status) if !deliveries::STATUSES.contains(&status.as_str()) => {
            Err(ApiError::InvalidRequest(format!(
                "`status` must be one of {}",
                deliveries::STATUSES.join(", ")
            )))
        }
        other => Ok(other),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllDeliveriesParams {
    status: Option<String>,
    /// RFC 3339: deliveries created at or after.
    since: Option<String>,
    limit: Option<u64>,
    after: Option<String>,
}

/// The caller's deliveries across all its subscriptions: what failed
/// since the incident began, in one list.
async fn all_deliveries(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    params: web::Query<AllDeliveriesParams>,
) -> Result<web::Json<Page<Delivery>>, ApiError> {
    let params = params.into_inner();
    let page = PageParams {
        limit: params.limit,
        after: params.after,
    };
    let query = DeliveriesQuery::check(params.status, params.since.as_deref(), page)?;
    let of = deliveries::DeliveriesOf::Owner(caller.owner());
    deliveries_page(&state, of, query).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsParams {
    /// RFC 3339; 24 hours ago when absent, at most 7 days ago.
    since: Option<String>,
}

/// The caller's deliveries in one hour, by status.
#[derive(Debug, Serialize)]
struct HourStats {
    #[serde(with = "time::serde::rfc3339")]
    hour: OffsetDateTime,
    delivered: i64,
    failed: i64,
    pending: i64,
}

#[derive(Debug, Serialize)]
struct DeliveryStats {
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// Hours with deliveries, oldest first.
    hours: Vec<HourStats>,
}

/// How far back the delivery figures reach.
const STATS_WINDOW: time::Duration = time::Duration::days(7);

/// The caller's deliveries since a time (created then or later), counted
/// per hour by status: what a chart of its traffic needs.
async fn delivery_stats(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    params: web::Query<StatsParams>,
) -> Result<web::Json<DeliveryStats>, ApiError> {
    let now = state.clock.now_utc();
    let since = match params.into_inner().since {
        Some(since) => since_param(&since)?.assume_utc(),
        None => now - time::Duration::days(1),
    };
    if since < now - STATS_WINDOW {
        return Err(ApiError::InvalidRequest(
            "`since` may be at most 7 days ago".into(),
        ));
    }
    let owner = caller.owner();
    let counts = state
        .db
        .run(move |conn| deliveries::hourly_counts(conn, &owner, to_db(since)))
        .await?;
    let mut hours: Vec<HourStats> = Vec::new();
    for count in counts {
        let hour = OffsetDateTime::from_unix_timestamp(count.hour * 3600)
            .map_err(|e| ApiError::Internal(e.into()))?;
        if hours.last().is_none_or(|last| last.hour != hour) {
            hours.push(HourStats {
                hour,
                delivered: 0,
                failed: 0,
                pending: 0,
            });
        }
        let slot = hours.last_mut().expect("pushed above");
        match count.status.as_str() {
            deliveries::DELIVERED => slot.delivered += count.count,
            deliveries::FAILED => slot.failed += count.count,
            _ => slot.pending += count.count,
        }
    }
    Ok(web::Json(DeliveryStats { since, hours }))
}

/// The `since` query parameter, or a 400 saying what it must be.
fn since_param(since: &str) -> Result<PrimitiveDateTime, ApiError> {
    parse_since(since)
        .ok_or_else(|| ApiError::InvalidRequest(format!("`since` {SINCE_FORMAT}, not `{since}`")))
}

/// A request for a list of deliveries, checked.
struct DeliveriesQuery {
    status: Option<String>,
    since: Option<time::PrimitiveDateTime>,
    limit: crate::domain::PageLimit,
    after: Option<DeliveryId>,
    page: PageParams,
}

impl DeliveriesQuery {
    fn check(
        status: Option<String>,
        since: Option<&str>,
        page: PageParams,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            status: status_filter(status)?,
            since: since.map(since_param).transpose()?,
            limit: page.limit()?,
            after: page.after(DeliveryId::parse)?,
            page,
        })
    }
}

/// A page of the deliveries of `of`, each with its attempts.
async fn deliveries_page(
    state: &AppState,
    of: deliveries::DeliveriesOf,
    query: DeliveriesQuery,
) -> Result<web::Json<Page<Delivery>>, ApiError> {
    let DeliveriesQuery {
        status,
        since,
        limit,
        after,
        page,
    } = query;
    let rows = state
        .db
        .run(move |conn| {
            let rows = deliveries::list(
                conn,
                &of,
                status.as_deref(),
                since,
                after.as_ref().map(DeliveryId::as_str),
                i64::from(limit.get()) + 1,
            )?;
            with_attempts(conn, rows)
        })
        .await?;
    Ok(web::Json(Page::from_rows(rows, limit, &page, |d| {
        d.id.clone()
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// RFC 3339: deliveries created at or after.
    since: String,
    /// `failed` (the default) or `all` (delivered ones too).
    #[serde(default)]
    include: Option<String>,
}

#[derive(Debug, Serialize)]
struct Replayed {
    requeued: usize,
    /// A full batch was queued: call again for more.
    has_more: bool,
}

/// Queues the subscription's failed (or all finished) deliveries since a
/// time again, at most [`REPLAY_LIMIT`] per call. Deliveries still queued
/// are left alone, so a second call queues nothing twice.
async fn replay(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
    body: web::Json<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let since = parse_since(&body.since).ok_or_else(|| validation("since", SINCE_FORMAT))?;
    let statuses: &'static [&'static str] = match body.include.as_deref() {
        None | Some("failed") => &[deliveries::FAILED],
        Some("all") => &[deliveries::FAILED, deliveries::DELIVERED],
        Some(_) => return Err(validation("include", "must be `failed` or `all`")),
    };
    let owner = caller.owner();
    let subscription = find(&state, owner.clone(), &path.id).await?;
    let now = db_now(&*state.clock);
    let requeued = state
        .writer
        .run(move |conn| {
            let requeued =
                deliveries::replay(conn, &subscription.id, Some(&owner), statuses, since, now)?;
            queue::announce(conn)?;
            Ok(requeued)
        })
        .await?;
    state.webhooks.wake.notify_one();
    // Possibly more: exactly the limit was queued (another call says).
    let has_more = requeued as i64 == REPLAY_LIMIT;
    Ok(HttpResponse::Accepted().json(Replayed { requeued, has_more }))
}

async fn deliveries_log(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<SubscriptionPath>,
    params: web::Query<DeliveryParams>,
) -> Result<web::Json<Page<Delivery>>, ApiError> {
    let params = params.into_inner();
    let page = PageParams {
        limit: params.limit,
        after: params.after,
    };
    let query = DeliveriesQuery::check(params.status, None, page)?;
    let owner = caller.owner();
    let subscription = find(&state, owner.clone(), &path.id).await?;
    let of = deliveries::DeliveriesOf::OwnedSubscription(owner, subscription.id);
    deliveries_page(&state, of, query).await
}

async fn retry(
    caller: Caller<SubscriptionsManage>,
    state: web::Data<AppState>,
    path: web::Path<DeliveryPath>,
) -> Result<HttpResponse, ApiError> {
    let (id, owner) = (path.id.to_string(), caller.owner());
    let now = db_now(&*state.clock);
    let found = state
        .writer
        .run(move |conn| {
            let Some((row, _)) = deliveries::find_owned(conn, &id, &owner)? else {
                return Ok(Ok(None));
            };
            // One retry at a time: attempts (and their rows) cannot pile up.
            if row.status == deliveries::PENDING {
                return Ok(Err(ApiError::Conflict(format!(
                    "delivery `{id}` is already queued for its next attempt; retry it once \
                     that attempt is made"
                ))));
            }
            if !deliveries::retry_now(conn, &id, Some(&owner), now)? {
                return Ok(Ok(None));
            }
            queue::announce(conn)?;
            let row = deliveries::find_owned(conn, &id, &owner)?;
            row.map(|row| with_attempts(conn, vec![row]))
                .transpose()
                .map(Ok)
        })
        .await??;
    let delivery = found
        .and_then(|mut list| list.pop())
        .ok_or_else(|| ApiError::not_found("delivery", &path.id))?;
    state.webhooks.wake.notify_one();
    Ok(HttpResponse::Accepted().json(delivery))
}
