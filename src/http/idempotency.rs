//! `Idempotency-Key` on the routes that create (`POST /messages`,
//! `POST /messages/{messageId}/comments`, `POST /subscriptions`), after the
//! IETF httpapi idempotency-key draft.
//!
//! The first request with a key runs as any other. The response it gets
//! (status, `Location`, `Content-Type`, body) is stored by the writer in the
//! transaction that writes what the request created, so it is kept exactly
//! when those effects are. For [`TTL`] a retry with the same key, by the
//! same client on the same route (method and route pattern), is answered
//! that response again with `Idempotency-Replayed: true`, and writes
//! nothing; with another path or body it is refused (422); while the first
//! is still running, 409. A request refused before anything was written (a
//! 4xx, a comment on a message that does not exist) stores nothing, so its
//! key may be used again.
//!
//! "Still running" is known in two ways. In this process, by the set of
//! keys whose requests are in flight ([`InFlight`]): a record becomes
//! visible only when the writer's batch commits, which is too late to see
//! a second request that arrives meanwhile. Across API processes (on
//! PostgreSQL), by the primary key of the stored responses: the later of two
//! inserts fails as a unique violation, answered 409 too (see
//! `ApiError::from(DbError)`); the writer redoes that command alone, so its
//! batch-mates still commit.
//!
//! Without the header all this costs nothing: no lookup, no row, the body
//! read by the JSON extractor as before.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use actix_web::dev::Payload;
use actix_web::error::JsonPayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::StreamExt as _;
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::PrimitiveDateTime;

use super::{AppState, BodyLimit, RoutePattern, json_error};
use crate::clock::{db_now, to_db};
use crate::db::idempotency::{self, Record};
use crate::db::models::IdempotencyRow;
use crate::domain::ClientId;
use crate::domain::idempotency_key::{IdempotencyKey, InvalidIdempotencyKey};
use crate::error::ApiError;
use crate::secret_box::SecretBox;

pub use crate::db::idempotency::TTL;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set (`true`) on a response given again to a retry.
pub const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// A JSON body, taken in place of `web::Json`, with the request's
/// `Idempotency-Key` when it has one.
#[derive(Debug)]
pub struct Idempotent<T> {
    pub body: T,
    pub key: Option<Keyed>,
}

/// A request's key, where it was used, and the fingerprint of the request.
#[derive(Debug)]
pub struct Keyed {
    key: IdempotencyKey,
    /// Method and route pattern: `POST /messages/{messageId}/comments`.
    route: String,
    fingerprint: String,
}

impl<T: DeserializeOwned + 'static> FromRequest for Idempotent<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let key = match header_key(req) {
            Ok(Some(key)) => key,
            Ok(None) => {
                let json = web::Json::<T>::from_request(req, payload);
                return Box::pin(async move {
                    let body = json.await?.into_inner();
                    Ok(Self { body, key: None })
                });
            }
            Err(refused) => return Box::pin(std::future::ready(Err(refused.into()))),
        };
        // The fingerprint needs the body's bytes: read them here, then let
        // the JSON extractor parse them as it would have, with its checks.
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let limit = req.app_data::<BodyLimit>().map_or(65_536, |limit| limit.0);
            let bytes = read_body(&req, payload, limit).await?;
            let route = format!(
                "{} {}",
                req.method(),
                req.app_data::<RoutePattern>()
                    .map_or_else(|| req.path(), |pattern| pattern.0)
            );
            let fingerprint = fingerprint(req.method(), req.path(), &bytes);
            let body = web::Json::<T>::from_request(&req, &mut Payload::from(bytes))
                .await?
                .into_inner();
            Ok(Self {
                body,
                key: Some(Keyed {
                    key,
                    route,
                    fingerprint,
                }),
            })
        })
    }
}

/// The `Idempotency-Key` of the request, if it has one.
fn header_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let parsed = if values.next().is_some() {
        Err(InvalidIdempotencyKey::Repeated)
    } else {
        IdempotencyKey::parse(value.as_bytes())
    };
    parsed
        .map(Some)
        .map_err(|invalid| ApiError::InvalidRequest(format!("`Idempotency-Key` {invalid}")))
}

/// The whole body, refused as the JSON extractor would refuse it when it is
/// over `limit` bytes.
async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if let Some(length) = announced.filter(|length| *length > limit) {
        return Err(json_error(JsonPayloadError::OverflowKnownLength {
            length,
            limit,
        }));
    }
    let mut body = BytesMut::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| json_error(JsonPayloadError::Payload(error)))?;
        if body.len() + chunk.len() > limit {
            return Err(json_error(JsonPayloadError::Overflow { limit }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// SHA-256 (hex) of what makes a request the same request: its method, its
/// path (the same key on another message's comments is another request)
/// and its body, byte for byte.
fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        method.as_str().as_bytes(),
        b"\n",
        path.as_bytes(),
        b"\n",
        body,
    ] {
        digest.update(part);
    }
    crate::trace::hex(digest.finish().as_ref())
}

/// A key as it is scoped: the same key from another client, or on another
/// route, is another key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    client_id: String,
    route: String,
    key: String,
}

impl Scope {
    /// What a stored body is sealed to, so that it opens for its own key
    /// only. No part holds a newline.
    fn binding(&self) -> String {
        format!("{}\n{}\n{}", self.client_id, self.route, self.key)
    }
}

/// The keys whose requests are running in this process.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashSet<Scope>>);

impl InFlight {
    /// Marks `scope` in flight until the mark is dropped; `None` when it
    /// already is.
    fn mark(self: &Arc<Self>, scope: Scope) -> Option<Mark> {
        let mut running = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running.insert(scope.clone()).then(|| Mark {
            in_flight: self.clone(),
            scope,
        })
    }

    /// Keys in flight now.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A key in flight; dropped when its request ends, answered or abandoned.
#[derive(Debug)]
struct Mark {
    in_flight: Arc<InFlight>,
    scope: Scope,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let mut running = self
            .in_flight
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        running.remove(&self.scope);
    }
}

/// What [`begin`] decided.
#[derive(Debug)]
pub enum Begun {
    /// The key's request ran before: its response, given again.
    Replay(HttpResponse),
    /// Run the request.
    Run(Once),
}

/// A request that runs; with a key, marked in flight until this is dropped
/// (keep it until the write has been answered).
#[derive(Debug)]
pub struct Once {
    keyed: Option<Running>,
}

#[derive(Debug)]
struct Running {
    mark: Mark,
    fingerprint: String,
    /// An expired record of the key, to replace.
    replaces: Option<PrimitiveDateTime>,
}

/// Starts a request of `client`: without a key, at no cost; with one, it is
/// marked in flight (409 if it already is), and its stored response, if
/// any, is looked up: given again if the request is the same (422 if not).
pub async fn begin(
    state: &AppState,
    client: &ClientId,
    keyed: Option<Keyed>,
) -> Result<Begun, ApiError> {
    let Some(Keyed {
        key,
        route,
        fingerprint,
    }) = keyed
    else {
        return Ok(Begun::Run(Once { keyed: None }));
    };
    let scope = Scope {
        client_id: client.to_string(),
        route,
        key: key.as_str().to_owned(),
    };
    let mark = state
        .in_flight
        .mark(scope.clone())
        .ok_or(ApiError::IdempotencyKeyInFlight)?;
    let found = state
        .db
        .run(move |conn| idempotency::find(conn, &scope.client_id, &scope.route, &scope.key))
        .await?;
    let oldest_live = to_db(state.clock.now_utc() - TTL);
    let replaces = match found {
        Some(row) if row.created_at > oldest_live => {
            if row.fingerprint != fingerprint {
                return Err(ApiError::IdempotencyKeyMismatch(format!(
                    "`Idempotency-Key` {key} was used in the last {} hours for another request to \
                     this route (another path or body); use a new key for a new request",
                    TTL.as_secs() / 3600
                )));
            }
            return replay(&mark.scope, row, &state.webhooks.secrets).map(Begun::Replay);
        }
        Some(expired) => Some(expired.created_at),
        None => None,
    };
    Ok(Begun::Run(Once {
        keyed: Some(Running {
            mark,
            fingerprint,
            replaces,
        }),
    }))
}

/// A stored response, as it was first given, marked as given again.
fn replay(
    scope: &Scope,
    row: IdempotencyRow,
    secrets: &SecretBox,
) -> Result<HttpResponse, ApiError> {
    let body = secrets.open(&row.body, &scope.binding()).map_err(|error| {
        ApiError::Internal(anyhow::Error::new(error).context("cannot open a stored response"))
    })?;
    let status = u16::try_from(row.status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("stored response has status {}", row.status))
        })?;
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::CONTENT_TYPE, row.content_type))
        .insert_header((IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true")));
    if let Some(location) = row.location {
        response.insert_header((header::LOCATION, location));
    }
    Ok(response.body(body))
}

impl Once {
    /// `201 Created` with `location` and `body` as JSON; with a key, also
    /// the record of that response, for the writer to store with the write.
    pub fn created(
        &self,
        state: &AppState,
        location: String,
        body: &impl Serialize,
    ) -> Result<(HttpResponse, Option<Record>), ApiError> {
        const JSON: &str = "application/json";
        let body = serde_json::to_string(body).map_err(|error| {
            ApiError::Internal(anyhow::Error::new(error).context("cannot serialise a response"))
        })?;
        let record = self.keyed.as_ref().map(|running| {
            let scope = &running.mark.scope;
            Record {
                row: IdempotencyRow {
                    client_id: scope.client_id.clone(),
                    route: scope.route.clone(),
                    idempotency_key: scope.key.clone(),
                    fingerprint: running.fingerprint.clone(),
                    status: i32::from(StatusCode::CREATED.as_u16()),
                    location: Some(location.clone()),
                    content_type: JSON.to_owned(),
                    body: state.webhooks.secrets.seal(&body, &scope.binding()),
                    created_at: db_now(&*state.clock),
                },
                replaces: running.replaces,
            }
        });
        let response = HttpResponse::Created()
            .insert_header((header::LOCATION, location))
            .content_type(JSON)
            .body(body);
        Ok((response, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(key: &str) -> Scope {
        Scope {
            client_id: "cli_a".into(),
            route: "POST /messages".into(),
            key: key.into(),
        }
    }

    #[test]
    fn a_key_is_in_flight_until_its_mark_is_dropped() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.mark(scope("k")).expect("the first request runs");
        assert!(
            in_flight.mark(scope("k")).is_none(),
            "a second ran alongside"
        );
        let other = in_flight
            .mark(scope("other"))
            .expect("another key is independent");
        drop(first);
        assert!(
            in_flight.mark(scope("k")).is_some(),
            "the key stayed marked"
        );
        drop(other);
        assert!(in_flight.is_empty());
    }

    #[test]
    fn the_same_key_of_another_client_or_route_is_another_key() {
        let in_flight = Arc::new(InFlight::default());
        let _held = in_flight.mark(scope("k"));
        let other_client = Scope {
            client_id: "cli_b".into(),
            ..scope("k")
        };
        let other_route = Scope {
            route: "POST /subscriptions".into(),
            ..scope("k")
        };
        assert!(in_flight.mark(other_client).is_some());
        assert!(in_flight.mark(other_route).is_some());
    }

    #[test]
    fn the_fingerprint_covers_method_path_and_every_byte_of_the_body() {
        let base = fingerprint(
            &Method::POST,
            "/messages/msg_a/comments",
            b"{\"text\":\"hi\"}",
        );
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            fingerprint(
                &Method::POST,
                "/messages/msg_a/comments",
                b"{\"text\":\"hi\"}"
            )
        );
        for other in [
            fingerprint(
                &Method::PUT,
                "/messages/msg_a/comments",
                b"{\"text\":\"hi\"}",
            ),
            fingerprint(
                &Method::POST,
                "/messages/msg_b/comments",
                b"{\"text\":\"hi\"}",
            ),
            fingerprint(
                &Method::POST,
                "/messages/msg_a/comments",
                b"{\"text\": \"hi\"}",
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
