//! Liveness and readiness probes; unauthenticated by design.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::{AppState, resource};
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(healthz)))
        .service(resource("/readyz").route(web::get().to(readyz)));
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// The database is reachable and its schema is current.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .db
        .check_ready()
        .await
        .map_err(|reason| ApiError::Unavailable(anyhow::anyhow!(reason)))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
