//! `GET /metrics` for Prometheus, and the middleware that counts every
//! request by route, method and status, and every refusal by its limit.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, web};

use super::oauth::OAuthError;
use super::{RoutePattern, resource};
use crate::clock::SharedClock;
use crate::db::{Database, DbError};
use crate::error::ApiError;
use crate::metrics::{CONTENT_TYPE, Metrics, RequestLabels, RouteLabels};

/// What `/metrics` reads: the counters, and where the gauges come from.
#[derive(Debug, Clone)]
pub struct Exporter {
    pub metrics: Arc<Metrics>,
    pub db: Database,
    pub clock: SharedClock,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET").route(web::get().to(scrape)));
}

async fn scrape(exporter: web::Data<Exporter>) -> HttpResponse {
    let text = exporter.metrics.render(&exporter.db, &exporter.clock).await;
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, CONTENT_TYPE))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text)
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    let method = method_label(req.method());
    let started = Instant::now();
    let result = next.call(req).await;
    // The pattern, not the path: ids would make a series per resource.
    // (Handlers and middleware answer errors as responses; an `Err` that
    // reaches here has lost its request, and with it its route.)
    let (route, status, error) = match &result {
        Ok(response) => (
            response
                .request()
                .app_data::<RoutePattern>()
                .map_or("unmatched", |pattern| pattern.0),
            response.status(),
            response.response().error(),
        ),
        Err(error) => (
            "unknown",
            error.as_response_error().status_code(),
            Some(error),
        ),
    };
    if let Some(limit) = error.and_then(refused_by) {
        metrics.rate_limited(limit);
    }
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: status.as_u16(),
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Standard methods by name, anything else as `other`: a client must not
/// be able to add series at will.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

/// The limit that refused a request, if a limit did.
fn refused_by(error: &Error) -> Option<&'static str> {
    if let Some(error) = error.as_error::<ApiError>() {
        return match error {
            ApiError::RateLimited { .. } => Some("api"),
            ApiError::Unavailable(cause) => {
                matches!(cause.downcast_ref::<DbError>(), Some(DbError::Overloaded))
                    .then_some("writer")
            }
            _ => None,
        };
    }
    match error.as_error::<OAuthError>()? {
        OAuthError::SlowDown { .. } => Some("token"),
        OAuthError::Busy => Some("secret_checks"),
        OAuthError::Server(ApiError::Unavailable(cause))
            if matches!(cause.downcast_ref::<DbError>(), Some(DbError::Overloaded)) =>
        {
            Some("writer")
        }
        _ => None,
    }
}
