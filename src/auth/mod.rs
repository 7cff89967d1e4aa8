//! Authentication and authorisation.
//!
//! thinhook is its own OAuth 2.0 authorisation server for machine clients:
//! [`clients`] are registered by the CLI with a secret stored only as an
//! argon2id hash ([`secret`]); `POST /oauth/token` trades client credentials
//! for a short-lived JWT ([`tokens`]) signed by the [`keys`] ring. Every
//! protected route is wrapped in [`authenticate_first`], which verifies the
//! bearer token and checks that the client is not revoked ([`revocations`],
//! in memory) before anything else of the request is looked at; its handler
//! takes a [`Caller<S>`](Caller) whose type names the [`Scope`] it needs,
//! checked before the handler runs. In the steady state none of this touches
//! the database.

pub mod clients;
pub mod keys;
pub mod portal_links;
pub mod revocations;
pub mod scope;
pub mod secret;
pub mod tokens;

use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest, web};

pub use scope::{Scope, Scopes};
use tokens::{TokenError, TokenPolicy};

use crate::clock::SharedClock;
use crate::db::Database;
use crate::domain::{ClientId, WorkspaceId};
use crate::error::ApiError;
use crate::rate_limit::{Decision, Policy, RateLimiter};

/// Verifies bearer tokens.
#[derive(Debug)]
pub struct Authenticator {
    pub keys: Arc<keys::KeyRing>,
    pub policy: TokenPolicy,
    /// For the token endpoint, which reads clients and keys.
    pub db: Database,
    pub clock: SharedClock,
    pub revocations: Arc<revocations::Revocations>,
    pub verified: VerifiedTokens,
    pub limits: Limits,
}

/// Rate limits of the authenticated routes and of the token endpoint.
#[derive(Debug)]
pub struct Limits {
    /// Authenticated requests, by client id.
    pub api: Option<RateLimiter>,
    /// Token requests, by source address.
    pub token_by_address: Option<RateLimiter>,
    /// Token requests, by the client id they name.
    pub token_by_client: Option<RateLimiter>,
    /// Client secret checks running at once.
    pub secret_checks: Arc<tokio::sync::Semaphore>,
    /// Authenticated requests, by workspace: all its clients together.
    pub workspace: RateLimiter,
    /// A workspace's limit unless it sets its own (rate 0: none).
    pub workspace_default: Policy,
}

impl Limits {
    pub fn new(settings: &crate::config::LimitSettings) -> Self {
        let token = Policy {
            rate: settings.token_per_second,
            burst: settings.token_burst,
        };
        let checks = match settings.concurrent_secret_checks {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n as usize,
        };
        Self {
            api: RateLimiter::new(Policy {
                rate: settings.api_per_second,
                burst: settings.api_burst,
            }),
            token_by_address: RateLimiter::new(token),
            token_by_client: RateLimiter::new(token),
            secret_checks: Arc::new(tokio::sync::Semaphore::new(checks)),
            workspace: RateLimiter::per_key(),
            workspace_default: Policy {
                rate: f64::from(settings.workspace_api_per_second),
                burst: settings.workspace_api_burst,
            },
        }
    }
}

/// A request admitted by the API rate limit, for its `RateLimit` headers.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub policy: Policy,
    pub remaining: u32,
    pub reset_secs: u64,
}

/// Tokens whose signature and claims have been verified, by their exact
/// text, so that a client presenting the same token again costs a lookup
/// instead of an Ed25519 verification. Only what a token says is cached; the
/// time, the key and the revocation are checked on every request.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    tokens: std::sync::RwLock<std::collections::HashMap<Box<str>, Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    kid: String,
    client_id: ClientId,
    scopes: Scopes,
    workspace: WorkspaceId,
    not_before: i64,
    expires: i64,
}

impl VerifiedTokens {
    /// Enough for every client's current token; beyond, the cache starts over.
    const CAPACITY: usize = 10_000;

    fn get(&self, token: &str) -> Option<Verified> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn insert(&self, token: &str, verified: Verified) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= Self::CAPACITY {
            tokens.clear();
        }
        tokens.insert(token.into(), verified);
    }
}

/// Who is calling, proven by a valid token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: ClientId,
    pub scopes: Scopes,
    /// Everything it reads, writes or subscribes to is in this workspace.
    pub workspace: WorkspaceId,
}

impl Authenticator {
    /// Verifies an `Authorization` header value and the client behind it.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let token = bearer_token(authorization).ok_or(TokenError::Missing)?;
        let now = self.clock.now_utc();
        let verified = match self.verified.get(token) {
            Some(verified) => {
                // Its key may have stopped verifying since.
                self.keys
                    .decoding_key(&verified.kid)
                    .await?
                    .ok_or(TokenError::UnknownKey)?;
                tokens::check_times(verified.not_before, verified.expires, &self.policy, now)?;
                verified
            }
            None => {
                let kid = tokens::key_id(token)?;
                let key = self
                    .keys
                    .decoding_key(&kid)
                    .await?
                    .ok_or(TokenError::UnknownKey)?;
                let claims = tokens::verify(token, &key, &self.policy, now)?;
                let verified = Verified {
                    kid,
                    client_id: ClientId::parse(&claims.sub).map_err(|_| TokenError::Subject)?,
                    scopes: Scopes::parse(&claims.scope).map_err(|_| TokenError::Claims)?,
                    workspace: claims.workspace()?,
                    not_before: claims.nbf.max(claims.iat),
                    expires: claims.exp,
                };
                self.verified.insert(token, verified.clone());
                verified
            }
        };
        self.revocations
            .check(verified.client_id.as_str(), &verified.workspace)?;
        Ok(Principal {
            client_id: verified.client_id,
            scopes: verified.scopes,
            workspace: verified.workspace,
        })
    }

    /// Takes one request from the client's rate limit, then from its
    /// workspace's; the client's quota, or `None` when it has no limit.
    pub fn admit(&self, principal: &Principal) -> Result<Option<Admitted>, ApiError> {
        let now = std::time::Instant::now();
        let admitted = match &self.limits.api {
            None => None,
            Some(limiter) => Some(take(
                limiter.policy(),
                limiter.check(principal.client_id.as_str(), now),
            )?),
        };
        let workspace = &principal.workspace;
        if let Some(policy) = self
            .revocations
            .workspace_rate(workspace, self.limits.workspace_default)
        {
            let decision = self
                .limits
                .workspace
                .check_with(policy, workspace.as_str(), now);
            let workspace_quota = take(policy, decision)?;
            return Ok(Some(admitted.unwrap_or(workspace_quota)));
        }
        Ok(admitted)
    }
}

/// The quota left after `decision` under `policy`, or the refusal.
fn take(policy: Policy, decision: Decision) -> Result<Admitted, ApiError> {
    match decision {
        Decision::Allowed {
            remaining,
            reset_secs,
        } => Ok(Admitted {
            policy,
            remaining,
            reset_secs,
        }),
        Decision::Limited { retry_after_secs } => Err(ApiError::RateLimited {
            policy,
            retry_after_secs,
        }),
    }
}

fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Names the scope a route needs, as a type: `Caller<MessagesRead>`.
pub trait RequiredScope {
    const SCOPE: Scope;
}

macro_rules! scope_markers {
    ($($(#[$doc:meta])* $name:ident => $scope:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Scope = Scope::$scope;
            }
        )*
    };
}

scope_markers! {
    /// `messages:read`
    MessagesRead => MessagesRead,
    /// `messages:write`
    MessagesWrite => MessagesWrite,
    /// `subscriptions:manage`
    SubscriptionsManage => SubscriptionsManage,
    /// `events:read`
    EventsRead => EventsRead,
}

/// Authenticates the request before anything else of the route runs: the
/// middleware of every route whose handler takes a [`Caller`] (see
/// `http::protected`). A handler's extractors are started together and
/// polled in turn, so a token check that waits (a key reload) would let a
/// body extractor answer 413/415/400 first, or read the body of a caller
/// who is not one. Here a request without a valid token gets its 401 before
/// any extractor exists; the [`Principal`] waits in the request's extensions.
pub async fn authenticate_first(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(authenticator) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        let error = ApiError::Internal(anyhow::anyhow!("no Authenticator registered in app data"));
        return Ok(req.error_response(error).map_into_right_body());
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().map(str::to_owned).unwrap_or_default());
    match authenticator.authenticate(authorization.as_deref()).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(error) => Ok(req.error_response(error).map_into_right_body()),
    }
}

/// An authenticated caller holding scope `S`. The token was checked by
/// [`authenticate_first`] before the handler's extractors started; this
/// checks the scope and takes the request from the client's rate limit. Put
/// it first among a handler's arguments so that a missing scope is refused
/// before the body is read.
#[derive(Debug)]
pub struct Caller<S> {
    pub client_id: ClientId,
    pub scopes: Scopes,
    /// The workspace every query of the request is scoped to.
    pub workspace: WorkspaceId,
    _scope: PhantomData<S>,
}

impl<S> Caller<S> {
    /// The caller as the owner of subscriptions: what scopes the storage
    /// layer's queries on them.
    pub fn owner(&self) -> crate::db::subscriptions::Owner {
        crate::db::subscriptions::Owner {
            workspace: self.workspace.clone(),
            client: self.client_id.clone(),
        }
    }

    /// Refuses the request unless the token also holds `scope`: for what a
    /// route needs beyond its own scope in some cases only.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::InsufficientScope(scope))
        }
    }
}

impl<S: RequiredScope + 'static> FromRequest for Caller<S> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Self::from_principal(req))
    }
}

impl<S: RequiredScope> Caller<S> {
    fn from_principal(req: &HttpRequest) -> Result<Self, ApiError> {
        // Absent only if the route was registered without `http::protected`:
        // a bug, refused loudly rather than authenticated in a racy order.
        let principal = req
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "{} takes a Caller but its route is not protected",
                    req.path()
                ))
            })?;
        if !principal.scopes.contains(S::SCOPE) {
            return Err(ApiError::InsufficientScope(S::SCOPE));
        }
        let authenticator = req.app_data::<web::Data<Authenticator>>().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("no Authenticator registered in app data"))
        })?;
        if let Some(admitted) = authenticator.admit(&principal)? {
            req.extensions_mut().insert(admitted);
        }
        Ok(Self {
            client_id: principal.client_id,
            scopes: principal.scopes,
            workspace: principal.workspace,
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_from_the_authorization_header() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
    }
}
