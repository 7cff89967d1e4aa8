//! The HTTP API: routes (one file per resource), extractor configuration that
//! turns every malformed request into a problem document, and middleware.

pub mod events;
pub mod health;
pub mod idempotency;
pub mod limits;
pub mod messages;
pub mod metrics;
pub mod oauth;
pub mod pagination;
pub mod portal;
pub mod request_id;
pub mod subscriptions;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::db::Database;
use crate::db::writer::Writer;
use crate::delivery::dispatcher::Wake;
use crate::delivery::ssrf::Guard;
use crate::domain::{CommentId, MessageId};
use crate::error::ApiError;
use crate::secret_box::SecretBox;

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Reads.
    pub db: Database,
    /// Writes.
    pub writer: Writer,
    pub links: Links,
    pub clock: SharedClock,
    pub webhooks: Webhooks,
    /// Requests with an `Idempotency-Key` running in this process.
    pub in_flight: Arc<idempotency::InFlight>,
}

/// What the API needs to register webhooks and hand events to the dispatcher.
#[derive(Debug, Clone)]
pub struct Webhooks {
    /// Vets URLs at registration, as the dispatcher does at every attempt.
    pub guard: Guard,
    pub secrets: Arc<SecretBox>,
    /// Wakes this process's dispatcher after a commit that made deliveries due.
    pub wake: Wake,
    /// How long a rotated-out secret keeps signing.
    pub secret_overlap: Duration,
    pub quota: crate::db::subscriptions::Quota,
    /// The gateway's `v1a` signing keys, published for receivers.
    pub keys: Arc<crate::delivery::webhook_keys::WebhookKeys>,
    /// Asks CloudEvents receivers for consent (re-verification on request).
    pub handshaker: Arc<crate::delivery::handshake::Handshaker>,
    /// Sends test events, as the dispatcher sends deliveries.
    pub attempter: Arc<crate::delivery::attempt::Attempter>,
}

/// Builds absolute URLs of resources from the public base URL.
#[derive(Debug, Clone)]
pub struct Links {
    base: String,
}

impl Links {
    pub fn new(public_base_url: &str) -> Self {
        Self {
            base: public_base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` (starting with `/`) under the public base URL.
    pub fn absolute(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn message_path(id: &MessageId) -> String {
        format!("/messages/{id}")
    }

    pub fn comment_path(message_id: &MessageId, id: &CommentId) -> String {
        format!("/messages/{message_id}/comments/{id}")
    }
}

/// Registers the routes and the extractor error handlers; `/metrics` too
/// when `with_metrics`, and the portal when it has its headers.
pub fn configure(
    max_body_bytes: usize,
    with_metrics: bool,
    portal: Option<portal::PortalHeaders>,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        if with_metrics {
            metrics::routes(cfg);
        }
        if let Some(headers) = portal {
            cfg.configure(portal::routes(headers));
        }
        cfg.app_data(BodyLimit(max_body_bytes))
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body_bytes)
                    .error_handler(|e, _| json_error(e).into()),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| path_error(e).into()))
            .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
            .configure(health::routes)
            .configure(oauth::routes)
            .configure(messages::routes)
            .configure(subscriptions::routes)
            .configure(events::routes)
            .default_service(web::to(unknown_route));
    }
}

/// A resource whose unsupported methods get a 405 problem document.
/// `allow` lists the methods routed (the `Allow` header of a 405).
pub fn resource(path: &'static str, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .app_data(RoutePattern(path))
        .default_service(web::to(move |req: HttpRequest| async move {
            ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allow,
            }
        }))
}

/// The pattern of the resource a request was routed to, for the metrics:
/// kept with the resource, so nothing is matched again to find it.
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// A route whose handler takes a [`Caller`](crate::auth::Caller): its bearer
/// token is checked before any of the handler's extractors start, so a
/// request without a valid token is answered 401 before its body is read or
/// its path, query or body can earn a 400/413/415. Call after `.to(…)`.
pub fn protected(route: actix_web::Route) -> actix_web::Route {
    route.wrap(from_fn(crate::auth::authenticate_first))
}

/// The configured `max_body_bytes`, for handlers that read a body without
/// the JSON extractor (the token endpoint).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

async fn unknown_route(req: HttpRequest) -> ApiError {
    ApiError::NotFound(format!("no route matches {}", req.path()))
}

fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge(format!("the request body must be at most {limit} bytes"))
        }
        JsonPayloadError::ContentType => {
            ApiError::UnsupportedMediaType("the request body must be application/json".into())
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::Validation(e.to_string()),
        JsonPayloadError::Deserialize(e) => {
            ApiError::MalformedJson(format!("the request body is not valid JSON: {e}"))
        }
        other => ApiError::InvalidRequest(format!("cannot read the request body: {other}")),
    }
}

fn path_error(error: PathError) -> ApiError {
    match error {
        PathError::Deserialize(e) => ApiError::InvalidRequest(e.to_string()),
        other => ApiError::InvalidRequest(other.to_string()),
    }
}

fn query_error(error: QueryPayloadError) -> ApiError {
    match error {
        QueryPayloadError::Deserialize(e) => {
            ApiError::InvalidRequest(format!("invalid query string: {e}"))
        }
        other => ApiError::InvalidRequest(other.to_string()),
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}
