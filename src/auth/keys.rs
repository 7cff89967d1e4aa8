//! The keys that sign access tokens: Ed25519, identified by their RFC 7638
//! JWK thumbprint (`kid`), kept in the database (generated on first start) or
//! loaded from a PEM file.
//!
//! The newest unretired key signs. `thinhook keys rotate` retires it and adds
//! a new one; a retired key keeps verifying for one token lifetime (plus
//! leeway), so no token dies early. Verifying keys are cached in memory and
//! reloaded when a token names an unknown `kid` or the JWKS is read (at most
//! once a second, so made-up kids cannot flood the database), and when the
//! cache is older than 30 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::{SharedClock, to_db};
use crate::db::models::SigningKeyRow;
use crate::db::signing_keys::{self, Purpose};
use crate::db::{Database, DbConnection, DbError};
use crate::secret_box::SecretBox;

/// Reload verifying keys at least this often, so keys rotated by another
/// process are published and old ones dropped.
const MAX_CACHE_AGE: Duration = Duration::from_secs(30);
/// Reload at most this often on an unknown `kid`.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A private key ready to sign. Not `Debug`: it holds secret material.
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    /// base64url raw public key, the JWK `x`.
    pub public_x: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_pkcs8(pkcs8: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 private key: {e}"))?;
        let public_x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(Self {
            kid: thumbprint(&public_x),
            encoding: EncodingKey::from_ed_der(pkcs8),
            public_x,
        })
    }

    /// Opens a stored key: sealed with the secrets key (bound to its kid),
    /// or, for rows written before keys were sealed, plain base64.
    pub fn from_row(row: &SigningKeyRow, secrets: &SecretBox) -> anyhow::Result<Self> {
        Self::from_pkcs8(&stored_pkcs8(row, secrets)?)
    }

    /// Loads a PKCS#8 `PRIVATE KEY` PEM file (as `openssl genpkey -algorithm ed25519` writes).
    pub fn from_pem_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read signing key file {}", path.display()))?;
        let body: String = text
            .lines()
            .skip_while(|line| line.trim() != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|line| line.trim() != "-----END PRIVATE KEY-----")
            .collect();
        let der = STANDARD
            .decode(body.trim())
            .with_context(|| format!("{} holds no PEM `PRIVATE KEY` block", path.display()))?;
        Self::from_pkcs8(&der).with_context(|| format!("invalid signing key in {}", path.display()))
    }
}

/// The PKCS#8 document of a stored key (of either purpose): sealed with the
/// secrets key (bound to its kid), or, for rows written before keys were
/// sealed, plain base64.
pub fn stored_pkcs8(row: &SigningKeyRow, secrets: &SecretBox) -> anyhow::Result<Vec<u8>> {
    let encoded = if row.private_key.starts_with("v1:") {
        secrets
            .open(&row.private_key, &row.kid)
            .context("cannot open the stored signing key")?
    } else {
        row.private_key.clone()
    };
    STANDARD
        .decode(encoded)
        .context("stored signing key is not base64")
}

/// RFC 7638 thumbprint of an Ed25519 public key: a stable, content-derived `kid`.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// A new key, as stored: the private key sealed with the secrets key.
pub fn generate_row(
    now: OffsetDateTime,
    secrets: &SecretBox,
    purpose: Purpose,
) -> anyhow::Result<SigningKeyRow> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
    Ok(SigningKeyRow {
        private_key: secrets.seal(&STANDARD.encode(pkcs8.as_ref()), &key.kid),
        kid: key.kid,
        public_key: key.public_x,
        created_at: to_db(now),
        retired_at: None,
        purpose: purpose.as_str().to_owned(),
    })
}

/// Makes sure a key of `purpose` is there to sign with; generates the first one.
pub fn ensure_signing_key(
    conn: &mut DbConnection,
    now: OffsetDateTime,
    secrets: &SecretBox,
    purpose: Purpose,
) -> anyhow::Result<()> {
    if signing_keys::active(conn, purpose)?.is_none() {
        let row = generate_row(now, secrets, purpose)?;
        signing_keys::insert(conn, &row)?;
        tracing::info!(
            kid = row.kid,
            purpose = purpose.as_str(),
            "generated the first signing key"
        );
    }
    Ok(())
}

/// Retires the signing key of `purpose` and makes a new one active; returns
/// the new `kid`.
pub fn rotate(
    conn: &mut DbConnection,
    now: OffsetDateTime,
    secrets: &SecretBox,
    purpose: Purpose,
) -> anyhow::Result<String> {
    let row = generate_row(now, secrets, purpose)?;
    crate::db::write_transaction(conn, |conn| {
        signing_keys::retire_active(conn, purpose, to_db(now))?;
        signing_keys::insert(conn, &row)
    })?;
    Ok(row.kid)
}

/// A public key as published in the JWKS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    pub kty: &'static str,
    pub crv: &'static str,
    pub x: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
}

impl Jwk {
    pub fn ed25519(kid: &str, x: &str) -> Self {
        Self {
            kty: "OKP",
            crv: "Ed25519",
            x: x.to_owned(),
            kid: kid.to_owned(),
            use_: "sig",
            alg: "EdDSA",
        }
    }
}

struct VerifyingKey {
    decoding: DecodingKey,
    jwk: Jwk,
    /// None while the key still signs; else when its last token expires.
    verify_until: Option<OffsetDateTime>,
}

#[derive(Default)]
struct VerifyCache {
    keys: HashMap<String, Arc<VerifyingKey>>,
    loaded_at: Option<Instant>,
}

enum Source {
    /// Keys in the database, their private halves sealed with this box.
    Database(Database, Arc<SecretBox>),
    File(Arc<SigningKey>),
}

/// Signs and verifies with the current set of keys.
pub struct KeyRing {
    source: Source,
    clock: SharedClock,
    /// How long a retired key keeps verifying: token lifetime plus leeway.
    grace: Duration,
    verify: RwLock<VerifyCache>,
    /// The last signing key read from the database, kept while it stays active.
    signing: Mutex<Option<Arc<SigningKey>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").finish_non_exhaustive()
    }
}

impl KeyRing {
    pub fn from_database(
        db: Database,
        secrets: Arc<SecretBox>,
        clock: SharedClock,
        grace: Duration,
    ) -> Self {
        Self::new(Source::Database(db, secrets), clock, grace)
    }

    pub fn from_file(key: SigningKey, clock: SharedClock, grace: Duration) -> Self {
        Self::new(Source::File(Arc::new(key)), clock, grace)
    }

    fn new(source: Source, clock: SharedClock, grace: Duration) -> Self {
        Self {
            source,
            clock,
            grace,
            verify: RwLock::default(),
            signing: Mutex::default(),
        }
    }

    /// The key that signs new tokens. Reads the database (the caller is on a
    /// blocking thread with a connection) so a rotation by another process
    /// takes effect at once.
    pub fn signing_key(&self, conn: &mut DbConnection) -> anyhow::Result<Arc<SigningKey>> {
        let secrets = match &self.source {
            Source::File(key) => return Ok(key.clone()),
            Source::Database(_, secrets) => secrets,
        };
        let row = match signing_keys::active(conn, Purpose::Tokens)? {
            Some(row) => row,
            None => {
                ensure_signing_key(conn, self.clock.now_utc(), secrets, Purpose::Tokens)?;
                signing_keys::active(conn, Purpose::Tokens)?
                    .context("no signing key after creating one")?
            }
        };
        let mut cached = self.signing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = cached.as_ref().filter(|key| key.kid == row.kid) {
            return Ok(key.clone());
        }
        let key = Arc::new(SigningKey::from_row(&row, secrets)?);
        *cached = Some(key.clone());
        Ok(key)
    }

    /// The key that verifies tokens naming `kid`, if it may still verify.
    pub async fn decoding_key(&self, kid: &str) -> Result<Option<DecodingKey>, DbError> {
        let now = self.clock.now_utc();
        if let Some(key) = self.cached(kid) {
            return Ok(usable(&key, now).then(|| key.decoding.clone()));
        }
        if self.may_reload() {
            self.reload().await?;
        }
        Ok(self
            .cached(kid)
            .filter(|key| usable(key, now))
            .map(|key| key.decoding.clone()))
    }

    /// Public keys that may verify a token now, newest first. Read afresh
    /// (at most once a second) so a rotation is published at once.
    pub async fn jwks(&self) -> Result<Vec<Jwk>, DbError> {
        if self.may_reload() {
            self.reload().await?;
        }
        let now = self.clock.now_utc();
        let cache = self.read_cache();
        let mut keys: Vec<_> = cache.keys.values().filter(|k| usable(k, now)).collect();
        // The signing key (no end) first, then by how long each still verifies.
        keys.sort_by_key(|k| {
            std::cmp::Reverse(
                k.verify_until
                    .map_or(i128::MAX, |t| t.unix_timestamp_nanos()),
            )
        });
        Ok(keys.into_iter().map(|k| k.jwk.clone()).collect())
    }

    fn cached(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let cache = self.read_cache();
        let fresh = cache
            .loaded_at
            .is_some_and(|at| at.elapsed() < MAX_CACHE_AGE);
        cache.keys.get(kid).filter(|_| fresh).cloned()
    }

    fn may_reload(&self) -> bool {
        self.read_cache()
            .loaded_at
            .is_none_or(|at| at.elapsed() >= MIN_RELOAD_INTERVAL)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, VerifyCache> {
        self.verify.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn reload(&self) -> Result<(), DbError> {
        let keys = match &self.source {
            Source::File(key) => vec![VerifyingKey {
                decoding: decoding_key(&key.public_x),
                jwk: Jwk::ed25519(&key.kid, &key.public_x),
                verify_until: None,
            }],
            Source::Database(db, _) => {
                let since = to_db(self.clock.now_utc() - self.grace);
                let rows = db
                    .run(move |conn| signing_keys::verifying(conn, Purpose::Tokens, since))
                    .await?;
                rows.iter()
                    .map(|row| VerifyingKey {
                        decoding: decoding_key(&row.public_key),
                        jwk: Jwk::ed25519(&row.kid, &row.public_key),
                        verify_until: row.retired_at.map(|at| at.assume_utc() + self.grace),
                    })
                    .collect()
            }
        };
        let mut cache = self.verify.write().unwrap_or_else(|p| p.into_inner());
        cache.keys = keys
            .into_iter()
            .map(|key| (key.jwk.kid.clone(), Arc::new(key)))
            .collect();
        cache.loaded_at = Some(Instant::now());
        Ok(())
    }
}

fn usable(key: &VerifyingKey, now: OffsetDateTime) -> bool {
    key.verify_until.is_none_or(|until| now < until)
}

fn decoding_key(x: &str) -> DecodingKey {
    // Stored keys were validated when made; a corrupt one verifies nothing.
    DecodingKey::from_ed_components(x).unwrap_or_else(|_| DecodingKey::from_ed_der(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> SecretBox {
        SecretBox::new(&[3u8; 32])
    }

    #[test]
    fn generated_keys_round_trip_and_are_named_by_thumbprint() {
        let row = generate_row(OffsetDateTime::now_utc(), &secrets(), Purpose::Tokens).unwrap();
        let key = SigningKey::from_row(&row, &secrets()).unwrap();
        assert_eq!(key.kid, row.kid);
        assert_eq!(key.public_x, row.public_key);
        assert_eq!(key.kid, thumbprint(&row.public_key));
        assert_eq!(URL_SAFE_NO_PAD.decode(&row.public_key).unwrap().len(), 32);
    }

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn private_keys_are_stored_sealed_and_bound_to_their_kid() {
        let row = generate_row(OffsetDateTime::now_utc(), &secrets(), Purpose::Tokens).unwrap();
        assert!(row.private_key.starts_with("v1:"), "stored in the clear");
        assert!(SigningKey::from_row(&row, &SecretBox::new(&[4u8; 32])).is_err());
        let moved = SigningKeyRow {
            kid: "another".into(),
            ..row.clone()
        };
        assert!(SigningKey::from_row(&moved, &secrets()).is_err());
    }

    #[test]
    fn pem_files_load() {
        let row = generate_row(OffsetDateTime::now_utc(), &secrets(), Purpose::Tokens).unwrap();
        let pkcs8 = secrets().open(&row.private_key, &row.kid).unwrap();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{pkcs8}\n-----END PRIVATE KEY-----\n");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pem).unwrap();
        assert_eq!(SigningKey::from_pem_file(file.path()).unwrap().kid, row.kid);
        std::fs::write(file.path(), "nonsense").unwrap();
        assert!(SigningKey::from_pem_file(file.path()).is_err());
    }
}
