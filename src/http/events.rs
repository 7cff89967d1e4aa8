//! The event feed: the same events the webhooks announce, for clients that
//! missed some or prefer to pull. Oldest first, behind an opaque cursor that
//! never skips an event (see `db::outbox`).

use actix_web::web;
use serde::Deserialize;

use super::pagination::{Page, PageParams};
use super::{AppState, protected, resource};
use crate::auth::{Caller, EventsRead};
use crate::db::events as repo;
use crate::db::models::EventRow;
use crate::delivery::payload::ThinEvent;
use crate::domain::{EventId, EventType, MessageId};
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/events", "GET").route(protected(web::get().to(feed))))
        .service(resource("/events/{eventId}", "GET").route(protected(web::get().to(get))));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedParams {
    after: Option<String>,
    limit: Option<u64>,
    /// Comma-separated event types.
    types: Option<String>,
    message_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EventPath {
    #[serde(rename = "eventId")]
    id: EventId,
}

/// An event as the feed shows it: exactly the body its webhooks carry.
fn event_json(event: &EventRow, base: &str) -> serde_json::Value {
    serde_json::to_value(ThinEvent::new(event, base)).unwrap_or_default()
}

async fn feed(
    caller: Caller<EventsRead>,
    state: web::Data<AppState>,
    params: web::Query<FeedParams>,
) -> Result<web::Json<Page<serde_json::Value>>, ApiError> {
    let params = params.into_inner();
    let page = PageParams {
        limit: params.limit,
        after: params.after,
    };
    let limit = page.limit()?;
    let after = page.after(|key| {
        key.parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or(crate::domain::cursor::InvalidCursor)
    })?;
    let types: Vec<&'static str> = params
        .types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| EventType::parse(t).map(EventType::as_str))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::InvalidRequest(format!("`types`: {e}")))?;
    let message_id = params
        .message_id
        .as_deref()
        .map(MessageId::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(format!("`message_id`: {e}")))?;
    let query = repo::FeedQuery {
        workspace: caller.workspace.to_string(),
        after,
        types,
        message_id: message_id.map(|id| id.to_string()),
        limit: i64::from(limit.get()) + 1,
    };
    let rows = match state
        .db
        .run(move |conn| repo::read_feed(conn, &query))
        .await?
    {
        repo::FeedRead::Page(rows) => rows,
        repo::FeedRead::Expired => {
            return Err(ApiError::Gone(
                "this cursor points before the retained events; start again without `after`".into(),
            ));
        }
    };
    let base = state.links.base().to_owned();
    let page = Page::from_rows(rows, limit, &page, |row| {
        row.feed_position.unwrap_or_default().to_string()
    });
    Ok(web::Json(page.map(|row| event_json(&row, &base))))
}

async fn get(
    caller: Caller<EventsRead>,
    state: web::Data<AppState>,
    path: web::Path<EventPath>,
) -> Result<web::Json<serde_json::Value>, ApiError> {
    let id = path.into_inner().id;
    let (lookup, workspace) = (id.to_string(), caller.workspace);
    let event = state
        .db
        .run(move |conn| repo::find(conn, &workspace, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    Ok(web::Json(event_json(&event, state.links.base())))
}
