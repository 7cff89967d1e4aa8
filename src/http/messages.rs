//! Messages and their comments: the board from which events arise.
//!
//! `GET /messages/{messageId}/comments/{commentId}` is the fetch endpoint a
//! thin webhook links to.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::idempotency::{self, Begun, Idempotent};
use super::pagination::{Page, PageParams};
use super::subscriptions::{self, CreatedSubscription, NewSubscription};
use super::{AppState, Links, protected, resource};
use crate::auth::{Caller, MessagesRead, MessagesWrite, Scope};
use crate::clock;
use crate::db::deliveries::FetchMark;
use crate::db::messages as repo;
use crate::db::models::{CommentRow, Format, MessageRow};
use crate::db::outbox::{Publication, Resource};
use crate::db::subscriptions::Owner;
use crate::domain::{CommentId, EventType, EventTypes, MessageId, Text};
use crate::error::ApiError;
use crate::trace::TraceParent;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/messages", "POST").route(protected(web::post().to(create_message))))
        .service(
            resource("/messages/{messageId}", "GET").route(protected(web::get().to(get_message))),
        )
        .service(
            resource("/messages/{messageId}/comments", "GET, POST")
                .route(protected(web::post().to(create_comment)))
                .route(protected(web::get().to(list_comments))),
        )
        .service(
            resource("/messages/{messageId}/comments/{commentId}", "GET")
                .route(protected(web::get().to(get_comment))),
        );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMessage {
    text: String,
    /// The seed API's shortcut: a subscription to new comments on this message.
    #[serde(rename = "newCommentWebhook", alias = "new_comment_webhook", default)]
    new_comment_webhook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateComment {
    text: String,
}

#[derive(Debug, Serialize)]
struct Message {
    id: String,
    text: String,
    /// The client that posted it.
    author_client_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

#[derive(Debug, Serialize)]
struct Comment {
    id: String,
    message_id: String,
    text: String,
    author_client_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Self {
            id: row.id,
            text: row.text,
            author_client_id: row.author_client_id,
            created_at: row.created_at.assume_utc(),
        }
    }
}

impl From<CommentRow> for Comment {
    fn from(row: CommentRow) -> Self {
        Self {
            id: row.id,
            message_id: row.message_id,
            text: row.text,
            author_client_id: row.author_client_id,
            created_at: row.created_at.assume_utc(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct MessagePath {
    #[serde(rename = "messageId")]
    message_id: MessageId,
}

#[derive(Debug, Deserialize)]
struct CommentPath {
    #[serde(rename = "messageId")]
    message_id: MessageId,
    #[serde(rename = "commentId")]
    comment_id: CommentId,
}

fn parse_text(field: &str, value: String) -> Result<Text, ApiError> {
    Text::parse(value).map_err(|e| ApiError::Validation(format!("`{field}` {e}")))
}

/// The message as created, with the subscription its `newCommentWebhook` made.
#[derive(Debug, Serialize)]
struct CreatedMessage {
    #[serde(flatten)]
    message: Message,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<CreatedSubscription>,
}

async fn create_message(
    caller: Caller<MessagesWrite>,
    state: web::Data<AppState>,
    body: Idempotent<CreateMessage>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Idempotent { body, key } = body;
    if body.new_comment_webhook.is_some() {
        // It creates a subscription: the scope that manages them is needed
        // as well as the one that posts.
        caller.require(Scope::SubscriptionsManage)?;
    }
    let once = match idempotency::begin(&state, &caller.client_id, key).await? {
        Begun::Run(once) => once,
        Begun::Replay(response) => return Ok(response),
    };
    let text = parse_text("text", body.text)?;
    let id = MessageId::generate();
    let subscription = match &body.new_comment_webhook {
        Some(url) => {
            let url = subscriptions::vet_url(&state, "newCommentWebhook", url).await?;
            let owner = caller.owner();
            check_quota(&state, &owner, &id).await?;
            let types = EventTypes::one(EventType::CommentCreated);
            Some(subscriptions::new_subscription(
                &state,
                &owner,
                subscriptions::Wanted {
                    url: &url,
                    event_types: &types,
                    message_id: Some(&id),
                    description: None,
                    signature_scheme: "v1",
                    format: Format::StandardWebhooks,
                },
            ))
        }
        None => None,
    };
    let now = clock::db_now(&*state.clock);
    let row = MessageRow {
        id: id.to_string(),
        text: text.into_string(),
        created_at: now,
        author_client_id: Some(caller.client_id.to_string()),
        last_sequence: 0,
        workspace_id: caller.workspace.to_string(),
    };
    let resource_path = Links::message_path(&id);
    let subscription_row = subscription.as_ref().map(|s| Box::new(s.row.clone()));
    let (created, idempotency) = once.created(
        &state,
        state.links.absolute(&resource_path),
        &CreatedMessage {
            message: row.clone().into(),
            subscription: subscription.map(NewSubscription::into_response),
        },
    )?;
    state
        .writer
        .publish(Publication {
            resource: Resource::Message {
                row,
                subscription: subscription_row,
            },
            resource_path,
            traceparent: Some(TraceParent::of_request(&req).to_string()),
            idempotency,
        })
        .await?;
    Ok(created)
}

/// Whether the caller may add a subscription to a new message. Read before
/// the message is published, so requests of one client in flight together
/// can pass the quota by their number; `POST /subscriptions` is exact.
async fn check_quota(state: &AppState, owner: &Owner, message: &MessageId) -> Result<(), ApiError> {
    let (owner, message, quota) = (owner.clone(), message.to_string(), state.webhooks.quota);
    let refusal = state
        .db
        .run(move |conn| {
            crate::db::subscriptions::quota_refusal(conn, &owner, Some(&message), quota)
        })
        .await?;
    refusal.map_or(Ok(()), |refusal| Err(ApiError::QuotaExceeded(refusal)))
}

async fn get_message(
    caller: Caller<MessagesRead>,
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner().message_id;
    let (lookup, workspace) = (id.clone(), caller.workspace.clone());
    let row = state
        .db
        .run(move |conn| repo::find_message(conn, &workspace, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found("message", &id))?;
    record_fetch(&state, &caller, &row.id);
    Ok(fetch_response(&req, &Message::from(row)))
}

async fn create_comment(
    caller: Caller<MessagesWrite>,
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    body: Idempotent<CreateComment>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let message_id = path.into_inner().message_id;
    let once = match idempotency::begin(&state, &caller.client_id, body.key).await? {
        Begun::Run(once) => once,
        Begun::Replay(response) => return Ok(response),
    };
    let text = parse_text("text", body.body.text)?;
    let comment_id = CommentId::generate();
    let now = clock::db_now(&*state.clock);
    let row = CommentRow {
        id: comment_id.to_string(),
        message_id: message_id.to_string(),
        text: text.into_string(),
        created_at: now,
        author_client_id: Some(caller.client_id.to_string()),
        workspace_id: caller.workspace.to_string(),
    };
    let resource_path = Links::comment_path(&message_id, &comment_id);
    let (created, idempotency) = once.created(
        &state,
        state.links.absolute(&resource_path),
        &Comment::from(row.clone()),
    )?;
    // The comment, its event, its deliveries and the response stored under
    // its key commit together or not at all.
    state
        .writer
        .publish(Publication {
            resource: Resource::Comment(row),
            resource_path,
            traceparent: Some(TraceParent::of_request(&req).to_string()),
            idempotency,
        })
        .await?
        .ok_or_else(|| ApiError::not_found("message", &message_id))?;
    Ok(created)
}

/// The fetch endpoint a webhook links to. A fetch by a client whose
/// subscriptions were sent this comment's event is recorded on those
/// deliveries (delivered → fetched), in the background.
async fn get_comment(
    caller: Caller<MessagesRead>,
    state: web::Data<AppState>,
    path: web::Path<CommentPath>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let CommentPath {
        message_id,
        comment_id,
    } = path.into_inner();
    let (m, c, workspace) = (
        message_id.clone(),
        comment_id.clone(),
        caller.workspace.clone(),
    );
    let row = state
        .db
        .run(move |conn| repo::find_comment(conn, &workspace, &m, &c))
        .await?
        .ok_or_else(|| ApiError::not_found("comment", &comment_id))?;
    record_fetch(&state, &caller, &row.id);
    Ok(fetch_response(&req, &Comment::from(row)))
}

/// Records, without waiting, that the caller fetched a resource.
fn record_fetch<S>(state: &AppState, caller: &Caller<S>, resource_id: &str) {
    state.writer.mark_fetched(FetchMark {
        resource_id: resource_id.to_owned(),
        owner: caller.client_id.to_string(),
        at: clock::db_now(&*state.clock),
    });
}

/// A resource as JSON with a strong `ETag` (a digest of the body), or `304
/// Not Modified` when the client already holds that version.
fn fetch_response(req: &HttpRequest, resource: &impl Serialize) -> HttpResponse {
    let body = serde_json::to_vec(resource).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18]));
    let already_held = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag)
        });
    let mut response = if already_held {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private"));
    if already_held {
        response.finish()
    } else {
        response.content_type("application/json").body(body)
    }
}

async fn list_comments(
    caller: Caller<MessagesRead>,
    state: web::Data<AppState>,
    path: web::Path<MessagePath>,
    params: web::Query<PageParams>,
) -> Result<web::Json<Page<Comment>>, ApiError> {
    let message_id = path.into_inner().message_id;
    let limit = params.limit()?;
    let after = params.after(CommentId::parse)?;
    let (lookup, workspace) = (message_id.clone(), caller.workspace.clone());
    let rows = state
        .db
        .run(move |conn| {
            if !repo::message_exists(conn, &workspace, &lookup)? {
                return Ok(None);
            }
            let fetch = i64::from(limit.get()) + 1;
            repo::list_comments(conn, &workspace, &lookup, after.as_ref(), fetch).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found("message", &message_id))?;
    let page = Page::from_rows(rows, limit, &params, |row| row.id.clone());
    Ok(web::Json(page.map(Comment::from)))
}
