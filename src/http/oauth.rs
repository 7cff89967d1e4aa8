//! The authorisation server: `POST /oauth/token` (RFC 6749 §4.4, client
//! credentials; RFC 7523, a portal link as a JWT bearer assertion) and
//! `GET /.well-known/jwks.json`.
//!
//! Errors here follow RFC 6749 §5.2 (`{"error", "error_description"}`), not
//! problem documents: that is what OAuth client libraries parse.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::json;

use super::{BodyLimit, resource};
use crate::auth::portal_links::{self, LinkError};
use crate::auth::{self, Authenticator, Scope, Scopes};
use crate::db::models::ClientRow;
use crate::domain::{ClientId, WorkspaceId};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::rate_limit::Decision;

/// The longest a token request waits for a free secret checker.
const SECRET_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/oauth/token", "POST").route(web::post().to(token)))
        .service(resource("/.well-known/jwks.json", "GET").route(web::get().to(jwks)))
        .service(
            resource("/.well-known/oauth-authorization-server", "GET")
                .route(web::get().to(metadata)),
        );
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The body is over `max_body_bytes`: an `invalid_request` with 413.
    #[error("the request body must be at most {limit} bytes")]
    TooLarge { limit: usize },
    /// `basic` says whether the client tried HTTP Basic, to answer with its challenge.
    #[error("client authentication failed")]
    InvalidClient { basic: bool },
    #[error("{0}")]
    InvalidScope(String),
    /// A portal link that cannot be exchanged.
    #[error("{0}")]
    InvalidGrant(#[from] LinkError),
    #[error("only the client_credentials and jwt-bearer (portal link) grants are supported")]
    UnsupportedGrantType,
    /// A token rate limit is spent (by source address or by client id).
    #[error("too many token requests; retry after {retry_after_secs} s")]
    SlowDown { retry_after_secs: u64 },
    /// Every secret checker stayed busy.
    #[error("too many token requests are being checked; retry shortly")]
    Busy,
    #[error("the token service is unavailable")]
    Server(#[from] ApiError),
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::TooLarge { .. } => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            // RFC 8628's code for a client asking too often.
            Self::SlowDown { .. } => "slow_down",
            Self::Busy => "temporarily_unavailable",
            Self::Server(_) => "server_error",
        }
    }
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowDown { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Server(inner) => inner.status_code(),
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Server(inner) = self {
            // Logs the cause; the client sees only `server_error`.
            let _ = inner.error_response();
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        match self {
            Self::InvalidClient { basic: true } => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="thinhook""#),
                ));
            }
            Self::SlowDown { retry_after_secs } => {
                response.insert_header((header::RETRY_AFTER, *retry_after_secs));
            }
            Self::Busy => {
                response.insert_header((header::RETRY_AFTER, 1));
            }
            _ => {}
        }
        response.json(json!({"error": self.code(), "error_description": self.to_string()}))
    }
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1: each part
/// form-urlencoded, then base64) or the form; never both.
fn client_credentials(
    req: &HttpRequest,
    form: &[(String, String)],
) -> Result<(String, String, bool), OAuthError> {
    let from_form = (field(form, "client_id")?, field(form, "client_secret")?);
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return match from_form {
            (Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned(), false)),
            _ => Err(OAuthError::InvalidClient { basic: false }),
        };
    };
    if from_form.0.is_some() || from_form.1.is_some() {
        return Err(OAuthError::InvalidRequest(
            "use either HTTP Basic or form fields for client authentication, not both",
        ));
    }
    let invalid = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| invalid())?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .ok_or_else(invalid)?;
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    let unescape = |part: &str| form_urlencoded_decode(part).ok_or_else(invalid);
    Ok((unescape(id)?, unescape(secret)?, true))
}

fn form_urlencoded_decode(part: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={part}")).ok()?;
    pairs.into_iter().next().map(|(_, value)| value)
}

/// One field of the form; a repeated field is an error (RFC 6749 §3.2).
fn field<'a>(form: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, OAuthError> {
    let mut values = form.iter().filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.as_str());
    if values.next().is_some() {
        return Err(OAuthError::InvalidRequest("a parameter was repeated"));
    }
    Ok(first)
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads the body, at most `max_body_bytes` of it. (The `Bytes` extractor
/// would read up to actix's own default, 256 KiB, whatever the setting.) A
/// declared length over the limit is refused before anything is read.
async fn read_body(req: &HttpRequest, body: web::Payload) -> Result<web::Bytes, OAuthError> {
    let limit = req
        .app_data::<BodyLimit>()
        .ok_or_else(|| {
            OAuthError::Server(ApiError::Internal(anyhow::anyhow!(
                "no BodyLimit registered in app data"
            )))
        })?
        .0;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(OAuthError::TooLarge { limit });
    }
    match body.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(OAuthError::InvalidRequest(
            "the request body could not be read",
        )),
        Err(_) => Err(OAuthError::TooLarge { limit }),
    }
}

async fn token(
    req: HttpRequest,
    body: web::Payload,
    authenticator: web::Data<Authenticator>,
    state: web::Data<super::AppState>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, OAuthError> {
    let result = issue_token(req, body, authenticator, state).await;
    metrics.token(match &result {
        Ok(_) => "issued",
        Err(error) => error.code(),
    });
    result
}

async fn issue_token(
    req: HttpRequest,
    body: web::Payload,
    authenticator: web::Data<Authenticator>,
    state: web::Data<super::AppState>,
) -> Result<HttpResponse, OAuthError> {
    if !is_form(&req) {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = read_body(&req, body).await?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| OAuthError::InvalidRequest("the body is not a valid form"))?;
    match field(&form, "grant_type")? {
        None => return Err(OAuthError::InvalidRequest("grant_type is required")),
        Some("client_credentials") => {}
        Some(portal_links::JWT_BEARER) => {
            return exchange_portal_link(&req, &form, &authenticator, &state).await;
        }
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
    }
    let requested = field(&form, "scope")?
        .map(|list| Scopes::parse(list).map_err(|e| OAuthError::InvalidScope(e.to_string())))
        .transpose()?;
    let (client_id, client_secret, basic) = client_credentials(&req, &form)?;
    // The id format is public: a malformed one needs no secret check.
    let client_id = ClientId::parse(&client_id).map_err(|_| OAuthError::InvalidClient { basic })?;
    limit_token_requests(&req, &client_id, &authenticator)?;

    let db = authenticator.db.clone();
    let lookup = client_id.clone();
    let client = db
        .run(move |conn| auth::clients::find_active(conn, &lookup))
        .await
        .map_err(ApiError::from)?;
    let credentials = check_secret(&authenticator, client, client_secret)
        .await?
        .ok_or(OAuthError::InvalidClient { basic })?;
    let scopes = match requested {
        Some(requested) if !requested.is_subset(&credentials.scopes) => {
            return Err(OAuthError::InvalidScope(
                "the requested scope exceeds what this client may ask for".into(),
            ));
        }
        Some(requested) if !requested.is_empty() => requested,
        _ => credentials.scopes.clone(),
    };

    grant(
        &authenticator,
        credentials.id,
        scopes,
        credentials.workspace,
    )
    .await
}

/// Signs an access token for `client` in `workspace` and answers with it.
async fn grant(
    authenticator: &web::Data<Authenticator>,
    client: ClientId,
    scopes: Scopes,
    workspace: WorkspaceId,
) -> Result<HttpResponse, OAuthError> {
    let auth = authenticator.clone();
    let issued = authenticator
        .db
        .run(move |conn| {
            let signed = auth
                .keys
                .signing_key(conn)
                .and_then(|key| {
                    auth::tokens::issue(
                        &key,
                        &auth.policy,
                        &client,
                        &scopes,
                        &workspace,
                        auth.clock.now_utc(),
                    )
                    .map_err(anyhow::Error::from)
                })
                .map_err(|e| OAuthError::Server(ApiError::Internal(e)));
            Ok(signed.map(|(token, claims)| (token, claims.scope)))
        })
        .await
        .map_err(ApiError::from)??;
    let (access_token, scope) = issued;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
        .json(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: authenticator.policy.lifetime.as_secs(),
            scope,
        }))
}

/// Exchanges a portal link (the `assertion`) for a token that manages the
/// link's client's subscriptions, once: the link is spent by the exchange.
async fn exchange_portal_link(
    req: &HttpRequest,
    form: &[(String, String)],
    authenticator: &web::Data<Authenticator>,
    state: &web::Data<super::AppState>,
) -> Result<HttpResponse, OAuthError> {
    let link = field(form, "assertion")?.ok_or(OAuthError::InvalidRequest(
        "the jwt-bearer grant needs an assertion",
    ))?;
    if field(form, "scope")?.is_some() {
        return Err(OAuthError::InvalidScope(
            "a portal link grants what the portal needs; ask for no scope".into(),
        ));
    }
    let kid = portal_links::key_id(link)?;
    let key = authenticator
        .keys
        .decoding_key(&kid)
        .await
        .map_err(ApiError::from)?
        .ok_or(LinkError::UnknownKey)?;
    let now = authenticator.clock.now_utc();
    let claims = portal_links::verify(link, &key, &authenticator.policy, now)?;
    let (client, workspace) = (claims.client()?, claims.workspace()?);
    limit_token_requests(req, &client, authenticator)?;

    let expires =
        time::OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|_| LinkError::Malformed)?;
    let (lookup, expires) = (client.clone(), crate::clock::to_db(expires));
    let row = authenticator
        .db
        .run(move |conn| auth::clients::find_active(conn, &lookup))
        .await
        .map_err(ApiError::from)?
        .ok_or(LinkError::ClientRevoked)?;
    if row.workspace_id != workspace.as_str() {
        return Err(LinkError::WorkspaceChanged.into());
    }
    let allowed = Scopes::parse(&row.scopes).unwrap_or_default();
    if !allowed.contains(Scope::SubscriptionsManage) {
        return Err(LinkError::NotPermitted.into());
    }
    // What the portal does and no more: a subscription to every event,
    // which needs events:read too, takes the client's own credentials.
    let scopes = [Scope::SubscriptionsManage].into_iter().collect();
    let (jti, used_by) = (claims.jti.clone(), client.to_string());
    let first_use = state
        .writer
        .run(move |conn| {
            crate::db::portal_links::use_once(
                conn,
                &jti,
                &used_by,
                crate::clock::to_db(now),
                expires,
            )
        })
        .await;
    match first_use {
        Ok(true) => {}
        Ok(false) => return Err(LinkError::Used.into()),
        // Spent by another process between the read and the insert.
        Err(crate::db::DbError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ))) => return Err(LinkError::Used.into()),
        Err(error) => return Err(ApiError::from(error).into()),
    }
    tracing::info!(client = %client, "portal link exchanged");
    grant(authenticator, client, scopes, workspace).await
}

/// Token requests are limited per source address and per client id, so a
/// flood of guesses costs the flooder, not the gateway. Behind a reverse
/// proxy every request comes from the proxy's address.
fn limit_token_requests(
    req: &HttpRequest,
    client_id: &ClientId,
    authenticator: &Authenticator,
) -> Result<(), OAuthError> {
    let now = std::time::Instant::now();
    let address = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    for (limiter, key) in [
        (&authenticator.limits.token_by_address, address.as_str()),
        (&authenticator.limits.token_by_client, client_id.as_str()),
    ] {
        if let Some(limiter) = limiter
            && let Decision::Limited { retry_after_secs } = limiter.check(key, now)
        {
            return Err(OAuthError::SlowDown { retry_after_secs });
        }
    }
    Ok(())
}

/// Checks the secret on the blocking pool, with no connection held, and at
/// most `limits.concurrent_secret_checks` at once: argon2id is meant to be
/// expensive, and a flood of checks must not take every core.
async fn check_secret(
    authenticator: &Authenticator,
    client: Option<ClientRow>,
    presented: String,
) -> Result<Option<auth::clients::Credentials>, OAuthError> {
    let permit = tokio::time::timeout(
        SECRET_CHECK_WAIT,
        authenticator.limits.secret_checks.clone().acquire_owned(),
    )
    .await
    .map_err(|_| OAuthError::Busy)?
    .map_err(|_| OAuthError::Busy)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        auth::clients::check_secret(client.as_ref(), &presented)
    })
    .await
    .map_err(|e| OAuthError::Server(ApiError::Internal(e.into())))
}

/// RFC 8414 authorisation server metadata: where to get tokens and the
/// keys that verify them, for clients that configure themselves.
async fn metadata(
    authenticator: web::Data<Authenticator>,
    state: web::Data<super::AppState>,
) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        ))
        .json(json!({
            "issuer": authenticator.policy.issuer,
            "token_endpoint": state.links.absolute("/oauth/token"),
            "jwks_uri": state.links.absolute("/.well-known/jwks.json"),
            "grant_types_supported": ["client_credentials", portal_links::JWT_BEARER],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": Scopes::all().to_string().split(' ').collect::<Vec<_>>(),
            // Client credentials only: no authorisation endpoint, so no response types.
            "response_types_supported": [],
        }))
}

async fn jwks(authenticator: web::Data<Authenticator>) -> Result<HttpResponse, ApiError> {
    let keys = authenticator.keys.jwks().await?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        ))
        .json(json!({ "keys": keys })))
}
