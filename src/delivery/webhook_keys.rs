//! The gateway's Ed25519 keys for Standard Webhooks `v1a` signatures. The
//! newest unretired key signs; every key that signed in the last
//! `delivery.secret_overlap_secs` is published at
//! `/.well-known/webhook-keys.json`, so a receiver that verifies a webhook
//! some time after it arrived still finds its key. A webhook names its key
//! in the `webhook-key-id` header.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::auth::keys::{Jwk, stored_pkcs8, thumbprint};
use crate::clock::{SharedClock, to_db};
use crate::db::models::SigningKeyRow;
use crate::db::signing_keys::{self, Purpose};
use crate::db::{Database, DbError};
use crate::secret_box::SecretBox;

/// A rotation by another process signs here within this long.
const MAX_CACHE_AGE: Duration = Duration::from_secs(30);

/// A key ready to sign. Not `Debug`: it holds secret material.
pub struct WebhookKey {
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl WebhookKey {
    pub fn from_pair(pair: Ed25519KeyPair) -> Self {
        let kid = thumbprint(&URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()));
        Self { kid, pair }
    }

    /// The `v1a,…` signature of one message: Ed25519 over `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let signed = super::signer::signed_content(id, timestamp, body);
        format!("v1a,{}", STANDARD.encode(self.pair.sign(&signed).as_ref()))
    }
}

/// The signing key, cached, and the published ones, read on demand.
pub struct WebhookKeys {
    db: Database,
    secrets: Arc<SecretBox>,
    clock: SharedClock,
    /// How long a retired key stays published.
    overlap: Duration,
    /// The signing key and when it was read (by the clock, which tests move).
    current: RwLock<Option<(Arc<WebhookKey>, time::OffsetDateTime)>>,
}

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKeys").finish_non_exhaustive()
    }
}

impl WebhookKeys {
    pub fn new(
        db: Database,
        secrets: Arc<SecretBox>,
        clock: SharedClock,
        overlap: Duration,
    ) -> Self {
        Self {
            db,
            secrets,
            clock,
            overlap,
            current: RwLock::default(),
        }
    }

    /// The key that signs now (made if there is none yet).
    pub async fn current(&self) -> anyhow::Result<Arc<WebhookKey>> {
        let now = self.clock.now_utc();
        let cached = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(_, read)| now - *read < MAX_CACHE_AGE)
            .map(|(key, _)| key.clone());
        if let Some(key) = cached {
            return Ok(key);
        }
        let secrets = self.secrets.clone();
        let row = self
            .db
            .run(move |conn| {
                let ensured =
                    crate::auth::keys::ensure_signing_key(conn, now, &secrets, Purpose::Webhooks);
                Ok(ensured.and_then(|()| {
                    signing_keys::active(conn, Purpose::Webhooks)?
                        .context("no webhook signing key after making one")
                }))
            })
            .await??;
        let unchanged = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(key, _)| key.kid == row.kid)
            .map(|(key, _)| key.clone());
        let key = match unchanged {
            Some(key) => key,
            None => Arc::new(open(&row, &self.secrets)?),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((key.clone(), now));
        Ok(key)
    }

    /// The public keys a receiver may need: every key not retired, or
    /// retired within the overlap; newest first.
    pub async fn published(&self) -> Result<Vec<Jwk>, DbError> {
        let since = to_db(self.clock.now_utc() - self.overlap);
        let rows = self
            .db
            .run(move |conn| signing_keys::verifying(conn, Purpose::Webhooks, since))
            .await?;
        Ok(rows
            .iter()
            .map(|row| Jwk::ed25519(&row.kid, &row.public_key))
            .collect())
    }
}

/// Opens a stored key.
fn open(row: &SigningKeyRow, secrets: &SecretBox) -> anyhow::Result<WebhookKey> {
    let pkcs8 = stored_pkcs8(row, secrets)?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("the stored webhook key is not Ed25519: {e}"))?;
    Ok(WebhookKey::from_pair(pair))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        secret_key_base64: String,
        public_key_base64: String,
        id: String,
        timestamp: i64,
        body: String,
        expected: String,
    }

    #[test]
    fn matches_the_standard_webhooks_v1a_vector() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/standard-webhooks.json"))
                .unwrap();
        let vectors: Vec<Vector> = serde_json::from_value(file["v1a"].clone()).unwrap();
        assert!(!vectors.is_empty());
        for v in vectors {
            let secret = STANDARD.decode(&v.secret_key_base64).unwrap();
            let public = STANDARD.decode(&v.public_key_base64).unwrap();
            let pair = Ed25519KeyPair::from_seed_and_public_key(&secret[..32], &public).unwrap();
            let key = WebhookKey::from_pair(pair);
            let signature = key.sign(&v.id, v.timestamp, v.body.as_bytes());
            assert_eq!(signature, v.expected);
            // And it verifies with the public key alone, as a receiver would.
            let raw = STANDARD
                .decode(signature.trim_start_matches("v1a,"))
                .unwrap();
            let message = format!("{}.{}.{}", v.id, v.timestamp, v.body);
            UnparsedPublicKey::new(&ED25519, &public)
                .verify(message.as_bytes(), &raw)
                .unwrap();
        }
    }
}
