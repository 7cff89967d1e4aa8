//! How errors travel.
//!
//! - Repository functions return diesel's `QueryResult`; [`crate::db::Database::run`]
//!   wraps pool and task failures in [`DbError`].
//! - Handlers return [`ApiError`], the one error type the HTTP layer knows.
//!   It renders as an RFC 9457 `application/problem+json` document whose
//!   `type` is stable (`/problems/<code>`), so clients can branch on it.
//!   Client mistakes are 4xx with a human `detail`; server faults are logged
//!   with their cause chain and answered with a generic 500/503 that reveals
//!   nothing internal.
//! - Off the request path (start-up, CLI) errors are `anyhow` with context.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::Scope;
use crate::auth::tokens::TokenError;
use crate::db::DbError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not syntactically valid JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// A path segment, query parameter or header is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// Well-formed, but a field's value is not acceptable.
    #[error("{0}")]
    Validation(String),
    /// No valid bearer token (RFC 6750 `invalid_token`).
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    /// A valid token without the scope the route needs.
    #[error("this request needs the `{0}` scope")]
    InsufficientScope(Scope),
    #[error("{0}")]
    NotFound(String),
    /// Existed once, removed for good (an expired feed cursor).
    #[error("{0}")]
    Gone(String),
    #[error("this resource does not support {method}; it supports {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Creating this would pass a quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The resource is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// A request with this `Idempotency-Key` is still running.
    #[error(
        "a request with this `Idempotency-Key` is still being processed; retry once it has \
         finished to get its response"
    )]
    IdempotencyKeyInFlight,
    /// The `Idempotency-Key` was used for another request.
    #[error("{0}")]
    IdempotencyKeyMismatch(String),
    /// The caller's rate limit is spent.
    #[error("too many requests: at most {} per second (bursts of {}); retry after {retry_after_secs} s", policy.rate, policy.burst)]
    RateLimited {
        policy: crate::rate_limit::Policy,
        retry_after_secs: u64,
    },
    #[error("the service is temporarily unable to handle the request")]
    Unavailable(#[source] anyhow::Error),
    #[error("the server failed to handle the request")]
    Internal(#[source] anyhow::Error),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("{what} `{id}` does not exist"))
    }

    /// The stable code, also the last segment of the problem `type`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::InvalidRequest(_) => "invalid-request",
            Self::Validation(_) => "validation-failed",
            Self::Unauthorized(_) => "unauthorized",
            Self::InsufficientScope(_) => "insufficient-scope",
            Self::NotFound(_) => "not-found",
            Self::Gone(_) => "gone",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::RateLimited { .. } => "rate-limited",
            Self::QuotaExceeded(_) => "quota-exceeded",
            Self::Conflict(_) => "conflict",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::IdempotencyKeyMismatch(_) => "idempotency-key-mismatch",
            Self::Unavailable(_) => "service-unavailable",
            Self::Internal(_) => "internal-error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "Malformed JSON",
            Self::InvalidRequest(_) => "Invalid request",
            Self::Validation(_) => "Validation failed",
            Self::Unauthorized(_) => "Unauthorized",
            Self::InsufficientScope(_) => "Insufficient scope",
            Self::NotFound(_) => "Not found",
            Self::Gone(_) => "Gone",
            Self::MethodNotAllowed { .. } => "Method not allowed",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::RateLimited { .. } => "Too many requests",
            Self::QuotaExceeded(_) => "Quota exceeded",
            Self::Conflict(_) => "Conflict",
            Self::IdempotencyKeyInFlight => "Request in flight",
            Self::IdempotencyKeyMismatch(_) => "Idempotency key reused",
            Self::Unavailable(_) => "Service unavailable",
            Self::Internal(_) => "Internal server error",
        }
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("/problems/{}", self.code()),
            title: self.title(),
            status: self.status_code().as_u16(),
            detail: self.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) | Self::IdempotencyKeyMismatch(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Gone(_) => StatusCode::GONE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExceeded(_) | Self::Conflict(_) | Self::IdempotencyKeyInFlight => {
                StatusCode::CONFLICT
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) | Self::Unavailable(cause) = self {
            // `{:#}` prints the whole cause chain on one line.
            tracing::error!(
                error = format!("{cause:#}"),
                code = self.code(),
                "request failed"
            );
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        match self {
            Self::Unavailable(_) | Self::IdempotencyKeyInFlight => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, *allow));
            }
            Self::RateLimited {
                policy,
                retry_after_secs,
            } => {
                response.insert_header((header::RETRY_AFTER, *retry_after_secs));
                for (name, value) in crate::http::limits::headers(*policy, 0, *retry_after_secs) {
                    response.insert_header((name, value));
                }
            }
            // RFC 6750 §3: the challenge names the error; descriptions are
            // fixed texts, safe inside a quoted string.
            Self::Unauthorized(reason) => {
                tracing::info!(reason = %reason, "bearer token refused");
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!(
                        r#"Bearer realm="thinhook", error="invalid_token", error_description="{reason}""#
                    ),
                ));
            }
            Self::InsufficientScope(scope) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!(
                        r#"Bearer realm="thinhook", error="insufficient_scope", scope="{scope}""#
                    ),
                ));
            }
            _ => {}
        }
        response.json(self.problem())
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        if crate::db::idempotency::is_key_taken(&error) {
            // Another process stored the key first: its request was in flight.
            Self::IdempotencyKeyInFlight
        } else if error.is_transient() {
            Self::Unavailable(error.into())
        } else {
            Self::Internal(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_type_is_derived_from_the_stable_code() {
        let problem = ApiError::not_found("message", "msg_x").problem();
        assert_eq!(problem.type_uri, "/problems/not-found");
        assert_eq!(problem.status, 404);
        assert_eq!(problem.detail, "message `msg_x` does not exist");
    }

    #[test]
    fn a_locked_or_lost_database_is_a_503_and_a_bad_query_a_500() {
        use diesel::result::{DatabaseErrorKind, Error};
        let database_error = |kind, message: &str| {
            DbError::Query(Error::DatabaseError(kind, Box::new(message.to_owned())))
        };
        for transient in [
            database_error(DatabaseErrorKind::Unknown, "database is locked"),
            database_error(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize",
            ),
            database_error(
                DatabaseErrorKind::ClosedConnection,
                "server closed the connection",
            ),
        ] {
            let status = ApiError::from(transient).status_code();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        }
        let bad = database_error(DatabaseErrorKind::Unknown, "no such column: x");
        assert_eq!(
            ApiError::from(bad).status_code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_key_another_process_stored_first_is_a_409_and_other_duplicates_a_500() {
        use diesel::result::{DatabaseErrorKind, Error};
        let duplicate = |message: &str| {
            DbError::Query(Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new(message.to_owned()),
            ))
        };
        for taken in [
            "UNIQUE constraint failed: idempotency_keys.client_id, idempotency_keys.route, \
             idempotency_keys.idempotency_key",
            "duplicate key value violates unique constraint \"idempotency_keys_pkey\"",
        ] {
            let error = ApiError::from(duplicate(taken));
            assert_eq!(error.code(), "idempotency-key-in-flight");
            assert_eq!(error.status_code(), StatusCode::CONFLICT);
            let response = error.error_response();
            assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
        }
        let other = ApiError::from(duplicate("UNIQUE constraint failed: comments.id"));
        assert_eq!(other.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn server_faults_do_not_reveal_their_cause() {
        let error = ApiError::Internal(anyhow::anyhow!("password=hunter2 in connection string"));
        let problem = error.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("hunter2"));
    }
}
