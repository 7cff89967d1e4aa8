//! Access tokens: JWTs (RFC 9068 profile) signed with EdDSA.
//!
//! Verification trusts nothing the token says about how to verify it: the
//! algorithm is pinned to EdDSA, the key is found by `kid` among our own keys
//! only, `typ` must be `at+jwt`, and `exp`, `iss`, `aud` and `sub` are
//! required. Times are checked against the injected clock.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::keys::SigningKey;
use super::scope::Scopes;
use crate::domain::{ClientId, TokenId, WorkspaceId};

pub const TOKEN_TYPE: &str = "at+jwt";

/// What the issuer puts in every token and the verifier demands of it.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub lifetime: Duration,
    /// Tolerated clock difference for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub client_id: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    pub scope: String,
    /// The client's workspace. Tokens issued before workspaces existed
    /// have none: they are the default workspace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsp: Option<String>,
}

impl AccessClaims {
    /// The workspace the token acts in.
    pub fn workspace(&self) -> Result<WorkspaceId, TokenError> {
        match &self.wsp {
            Some(wsp) => WorkspaceId::parse(wsp).map_err(|_| TokenError::Claims),
            None => Ok(WorkspaceId::default_workspace()),
        }
    }
}

/// Why a token was refused. The message goes into `error_description`; it
/// names the failed check, never a key or a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token was presented")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token must be signed with EdDSA")]
    Algorithm,
    #[error("the token type must be at+jwt")]
    Type,
    #[error("the token names no key")]
    NoKeyId,
    #[error("the token's signing key is unknown or retired")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("the token's claims are malformed")]
    Claims,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    Issuer,
    #[error("the token is meant for another audience")]
    Audience,
    #[error("the token's subject is not a client of this gateway")]
    Subject,
    #[error("the token's client has been revoked")]
    ClientRevoked,
    #[error("the token's client is no longer in the token's workspace")]
    WorkspaceChanged,
}

/// Signs a new access token; returns it with its claims.
pub fn issue(
    key: &SigningKey,
    policy: &TokenPolicy,
    client_id: &ClientId,
    scopes: &Scopes,
    workspace: &WorkspaceId,
    now: OffsetDateTime,
) -> Result<(String, AccessClaims), jsonwebtoken::errors::Error> {
    let iat = now.unix_timestamp();
    let claims = AccessClaims {
        iss: policy.issuer.clone(),
        aud: policy.audience.clone(),
        sub: client_id.to_string(),
        client_id: client_id.to_string(),
        iat,
        nbf: iat,
        exp: iat + i64::try_from(policy.lifetime.as_secs()).unwrap_or(i64::MAX),
        jti: TokenId::generate().to_string(),
        scope: scopes.to_string(),
        wsp: Some(workspace.to_string()),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TOKEN_TYPE.to_owned());
    header.kid = Some(key.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
    Ok((token, claims))
}

/// Checks the header before any key is looked up; returns the `kid`.
pub fn key_id(token: &str) -> Result<String, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm);
    }
    let typ_ok = header.typ.as_deref().is_some_and(|typ| {
        typ.eq_ignore_ascii_case(TOKEN_TYPE) || typ.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok {
        return Err(TokenError::Type);
    }
    header.kid.ok_or(TokenError::NoKeyId)
}

/// Verifies signature and claims with `key` (found by [`key_id`]).
pub fn verify(
    token: &str,
    key: &DecodingKey,
    policy: &TokenPolicy,
    now: OffsetDateTime,
) -> Result<AccessClaims, TokenError> {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&[&policy.audience]);
    // Time is checked below against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &validation)
        .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => TokenError::Signature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
            ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::Json(_) | ErrorKind::InvalidClaimFormat(_) => TokenError::Claims,
            _ => TokenError::Malformed,
        })?
        .claims;
    check_times(claims.nbf.max(claims.iat), claims.exp, policy, now)?;
    if claims.sub != claims.client_id || ClientId::parse(&claims.sub).is_err() {
        return Err(TokenError::Subject);
    }
    Ok(claims)
}

/// Whether a token valid from `not_before` until `expires` (unix seconds)
/// is valid `now`, with the policy's leeway.
pub fn check_times(
    not_before: i64,
    expires: i64,
    policy: &TokenPolicy,
    now: OffsetDateTime,
) -> Result<(), TokenError> {
    let now = now.unix_timestamp();
    let leeway = i64::try_from(policy.leeway.as_secs()).unwrap_or(i64::MAX);
    if now >= expires.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if not_before > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A policy and fresh keys for the unit tests of tokens and of what
    //! is signed like them.
    use super::*;
    use crate::auth::keys::generate_row;

    pub(crate) fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "http://gw.test".into(),
            audience: "thinhook".into(),
            lifetime: Duration::from_secs(900),
            leeway: Duration::from_secs(30),
        }
    }

    /// A new Ed25519 key: its signing half and its verifying half.
    pub(crate) fn key() -> (SigningKey, DecodingKey) {
        let secrets = crate::secret_box::SecretBox::new(&[1u8; 32]);
        let row = generate_row(
            OffsetDateTime::now_utc(),
            &secrets,
            crate::db::signing_keys::Purpose::Tokens,
        )
        .unwrap();
        let signing = SigningKey::from_row(&row, &secrets).unwrap();
        let decoding = DecodingKey::from_ed_components(&row.public_key).unwrap();
        (signing, decoding)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{key, policy};
    use super::*;

    /// A token for a new client with every scope, issued at `now`.
    fn token_at(signing: &SigningKey, now: OffsetDateTime) -> String {
        let client = ClientId::generate();
        issue(
            signing,
            &policy(),
            &client,
            &Scopes::all(),
            &WorkspaceId::default_workspace(),
            now,
        )
        .unwrap()
        .0
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let (signing, decoding) = key();
        let client = ClientId::generate();
        let now = OffsetDateTime::now_utc();
        let scopes = Scopes::parse("messages:read").unwrap();
        let workspace = WorkspaceId::generate();
        let (token, issued) =
            issue(&signing, &policy(), &client, &scopes, &workspace, now).unwrap();

        assert_eq!(key_id(&token), Ok(signing.kid.clone()));
        let claims = verify(&token, &decoding, &policy(), now).unwrap();
        assert_eq!(claims, issued);
        assert_eq!(claims.workspace(), Ok(workspace));
        assert_eq!(claims.sub, client.to_string());
        assert_eq!(claims.exp - claims.iat, 900);
        assert_eq!(claims.scope, "messages:read");
    }

    #[test]
    fn expiry_is_checked_against_the_given_time_with_leeway() {
        let (signing, decoding) = key();
        let now = OffsetDateTime::now_utc();
        let token = token_at(&signing, now);
        let later = |secs| now + Duration::from_secs(secs);
        assert!(verify(&token, &decoding, &policy(), later(900 + 29)).is_ok());
        assert_eq!(
            verify(&token, &decoding, &policy(), later(900 + 30)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&token, &decoding, &policy(), now - Duration::from_secs(31)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn a_token_from_another_issuer_or_for_another_audience_is_refused() {
        let (signing, decoding) = key();
        let now = OffsetDateTime::now_utc();
        let token = token_at(&signing, now);
        let other_issuer = TokenPolicy {
            issuer: "http://evil.test".into(),
            ..policy()
        };
        let other_audience = TokenPolicy {
            audience: "someone-else".into(),
            ..policy()
        };
        assert_eq!(
            verify(&token, &decoding, &other_issuer, now),
            Err(TokenError::Issuer)
        );
        assert_eq!(
            verify(&token, &decoding, &other_audience, now),
            Err(TokenError::Audience)
        );
    }

    #[test]
    fn another_keys_signature_is_refused() {
        let (signing, _) = key();
        let (_, other_decoding) = key();
        let now = OffsetDateTime::now_utc();
        let token = token_at(&signing, now);
        assert_eq!(
            verify(&token, &other_decoding, &policy(), now),
            Err(TokenError::Signature)
        );
    }
}
