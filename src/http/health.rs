//! Liveness and readiness probes; unauthenticated by design.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::{AppState, resource};
use crate::auth::Authenticator;
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", "GET").route(web::get().to(healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(readyz)))
        .service(resource("/openapi.yaml", "GET").route(web::get().to(openapi)));
}

/// The API's own description, for generated clients and tools.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml")
        .body(include_str!("../../openapi.yaml"))
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database is reachable, its schema is current, and tokens can be
/// signed (the signing key opens with this process's secrets key).
async fn readyz(
    state: web::Data<AppState>,
    authenticator: web::Data<Authenticator>,
) -> Result<HttpResponse, ApiError> {
    state
        .db
        .check_ready()
        .await
        .map_err(|reason| ApiError::Unavailable(anyhow::anyhow!(reason)))?;
    let keys = authenticator.keys.clone();
    state
        .db
        .run(move |conn| Ok(keys.signing_key(conn).map(drop)))
        .await?
        .map_err(|error| ApiError::Unavailable(error.context("tokens cannot be signed")))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
