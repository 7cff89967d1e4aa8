//! Portal links: a sign-in to the subscriber portal that the operator mints
//! for one client (`thinhook portal-link`), as Svix's magic links do.
//!
//! A link carries a JWT signed by the token keys, exchanged at
//! `POST /oauth/token` with the JWT bearer grant (RFC 7523) for an access
//! token scoped to `subscriptions:manage` in the client's workspace. It is
//! single-use (its `jti` is recorded at the exchange), expires, and names
//! its workspace, so a link of a client since moved or revoked is refused.
//! Its `typ` and audience differ from an access token's: neither passes
//! for the other.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::keys::SigningKey;
use super::tokens::{TokenError, TokenPolicy, check_times};
use crate::domain::{ClientId, TokenId, WorkspaceId};

pub const LINK_TYPE: &str = "portal-link+jwt";
/// The OAuth 2.0 grant type a link is exchanged with (RFC 7523 §2.1).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a link lasts unless the operator says otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The longest a link may last.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    pub iss: String,
    /// The token endpoint (RFC 7523 §3): where the link is exchanged.
    pub aud: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub wsp: String,
}

impl LinkClaims {
    pub fn client(&self) -> Result<ClientId, LinkError> {
        ClientId::parse(&self.sub).map_err(|_| LinkError::Malformed)
    }

    pub fn workspace(&self) -> Result<WorkspaceId, LinkError> {
        WorkspaceId::parse(&self.wsp).map_err(|_| LinkError::Malformed)
    }
}

/// Why a link was refused: the `error_description` of its `invalid_grant`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the portal link is malformed")]
    Malformed,
    #[error("the portal link's signing key is unknown or retired")]
    UnknownKey,
    #[error("the portal link's signature is invalid")]
    Signature,
    #[error(
        "the portal link names another issuer or token endpoint: make links with the gateway's \
         own configuration (public_base_url, auth.issuer)"
    )]
    Issuer,
    #[error("the portal link has expired")]
    Expired,
    #[error("the portal link was used already: ask for a new one")]
    Used,
    #[error("the portal link's client has been revoked")]
    ClientRevoked,
    #[error("the portal link's client is no longer in the link's workspace")]
    WorkspaceChanged,
    #[error("the portal link's client may not manage subscriptions")]
    NotPermitted,
}

/// Where links are exchanged: their audience.
pub fn audience(policy: &TokenPolicy) -> String {
    format!("{}/oauth/token", policy.issuer)
}

/// Signs a link for `client` of `workspace`, valid for `lifetime` from `now`.
pub fn issue(
    key: &SigningKey,
    policy: &TokenPolicy,
    client: &ClientId,
    workspace: &WorkspaceId,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<(String, LinkClaims), jsonwebtoken::errors::Error> {
    let iat = now.unix_timestamp();
    let claims = LinkClaims {
        iss: policy.issuer.clone(),
        aud: audience(policy),
        sub: client.to_string(),
        iat,
        exp: iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
        jti: TokenId::generate().to_string(),
        wsp: workspace.to_string(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(LINK_TYPE.to_owned());
    header.kid = Some(key.kid.clone());
    let link = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
    Ok((link, claims))
}

/// Checks the header before any key is looked up; returns the `kid`.
pub fn key_id(link: &str) -> Result<String, LinkError> {
    let header = jsonwebtoken::decode_header(link).map_err(|_| LinkError::Malformed)?;
    let typ_ok = header
        .typ
        .as_deref()
        .is_some_and(|typ| typ.eq_ignore_ascii_case(LINK_TYPE));
    if header.alg != Algorithm::EdDSA || !typ_ok {
        return Err(LinkError::Malformed);
    }
    header.kid.ok_or(LinkError::Malformed)
}

/// Verifies a link's signature, issuer, audience and times with `key`
/// (found by [`key_id`]). Whether it was used, and whether its client may
/// still sign in, is for the caller to check.
pub fn verify(
    link: &str,
    key: &DecodingKey,
    policy: &TokenPolicy,
    now: OffsetDateTime,
) -> Result<LinkClaims, LinkError> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&[audience(policy)]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<LinkClaims>(link, key, &validation)
        .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => LinkError::Signature,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => LinkError::Issuer,
            _ => LinkError::Malformed,
        })?
        .claims;
    check_times(claims.iat, claims.exp, policy, now).map_err(|e| match e {
        TokenError::Expired => LinkError::Expired,
        _ => LinkError::Malformed,
    })?;
    claims.client()?;
    claims.workspace()?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::fixtures::{key, policy};
    use crate::auth::{Scopes, tokens};

    #[test]
    fn a_link_verifies_until_it_expires() {
        let (signing, decoding) = key();
        let (client, workspace) = (ClientId::generate(), WorkspaceId::generate());
        let now = OffsetDateTime::now_utc();
        let lifetime = Duration::from_secs(600);
        let (link, issued) =
            issue(&signing, &policy(), &client, &workspace, now, lifetime).unwrap();

        assert_eq!(key_id(&link), Ok(signing.kid.clone()));
        let claims = verify(&link, &decoding, &policy(), now).unwrap();
        assert_eq!(claims, issued);
        assert_eq!(claims.aud, "http://gw.test/oauth/token");
        assert_eq!(
            (claims.client(), claims.workspace()),
            (Ok(client), Ok(workspace))
        );
        let later = now + Duration::from_secs(600 + 30);
        assert_eq!(
            verify(&link, &decoding, &policy(), later),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn a_link_and_an_access_token_do_not_pass_for_each_other() {
        let (signing, decoding) = key();
        let (client, workspace) = (ClientId::generate(), WorkspaceId::generate());
        let now = OffsetDateTime::now_utc();
        let (token, _) = tokens::issue(
            &signing,
            &policy(),
            &client,
            &Scopes::all(),
            &workspace,
            now,
        )
        .unwrap();
        assert_eq!(key_id(&token), Err(LinkError::Malformed), "typ at+jwt");
        let (link, _) = issue(
            &signing,
            &policy(),
            &client,
            &workspace,
            now,
            DEFAULT_LIFETIME,
        )
        .unwrap();
        assert_eq!(tokens::key_id(&link), Err(TokenError::Type));
        // Past the type check, its claims are not an access token's.
        assert!(tokens::verify(&link, &decoding, &policy(), now).is_err());
    }

    #[test]
    fn a_link_signed_by_another_key_or_for_another_issuer_is_refused() {
        let ((signing, decoding), (_, other)) = (key(), key());
        let (client, workspace) = (ClientId::generate(), WorkspaceId::generate());
        let now = OffsetDateTime::now_utc();
        let (link, _) = issue(
            &signing,
            &policy(),
            &client,
            &workspace,
            now,
            DEFAULT_LIFETIME,
        )
        .unwrap();
        assert_eq!(
            verify(&link, &other, &policy(), now),
            Err(LinkError::Signature)
        );
        let elsewhere = TokenPolicy {
            issuer: "http://other.test".into(),
            ..policy()
        };
        let (link, _) = issue(
            &signing,
            &elsewhere,
            &client,
            &workspace,
            now,
            DEFAULT_LIFETIME,
        )
        .unwrap();
        assert_eq!(
            verify(&link, &decoding, &policy(), now),
            Err(LinkError::Issuer)
        );
    }
}
