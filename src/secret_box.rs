//! Encryption at rest for secrets the gateway must be able to read back
//! (webhook signing secrets, token signing keys): AES-256-GCM with a key
//! from the configuration.
//!
//! A sealed value is `v1:` + base64(nonce ‖ ciphertext ‖ tag). The row it
//! belongs to is bound in as associated data, so a ciphertext copied to
//! another row does not open.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const VERSION: &str = "v1:";
const KEY_LEN: usize = 32;

pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a sealed secret could not be opened: wrong encryption key, or corrupted")]
pub struct OpenError;

impl SecretBox {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256");
        Self {
            key: LessSafeKey::new(key),
        }
    }

    /// From base64 of 32 bytes, as in `secrets.encryption_key`.
    pub fn from_base64(encoded: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .context("the encryption key is not base64")?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the encryption key must be 32 bytes"))?;
        Ok(Self::new(&key))
    }

    /// The key the configuration names, checked against a secret already
    /// sealed in the database (`sample`: the sealed value and what it is
    /// bound to), if there is one. The key file is created (mode 0600) only
    /// when it is missing and the database holds no sealed secret: a new key
    /// could open nothing already there, so a wrong or moved key file stops
    /// start-up instead of failing every request that needs a secret.
    pub fn for_database(
        settings: &crate::config::SecretsSettings,
        sample: Option<(String, String)>,
    ) -> anyhow::Result<Self> {
        let (secrets, origin) = if settings.encryption_key.is_empty() {
            let path = Path::new(&settings.key_file);
            let origin = format!("the key file {}", path.display());
            match read_key_file(path)? {
                Some(secrets) => (secrets, origin),
                None if sample.is_none() => return create_key_file(path),
                None => anyhow::bail!(
                    "{origin} does not exist, but the database holds secrets sealed with a key: \
                     point secrets.key_file at that key (or set secrets.encryption_key)"
                ),
            }
        } else {
            let secrets = Self::from_base64(&settings.encryption_key)
                .context("invalid secrets.encryption_key")?;
            (secrets, "secrets.encryption_key".to_owned())
        };
        if let Some((sealed, bound_to)) = sample {
            anyhow::ensure!(
                secrets.open(&sealed, &bound_to).is_ok(),
                "{origin} does not open the secrets stored in the database: it is not the key \
                 they were sealed with"
            );
        }
        Ok(secrets)
    }

    pub fn seal(&self, plaintext: &str, bound_to: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system random source is available");
        let mut buffer = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound_to.as_bytes()),
                &mut buffer,
            )
            .expect("AES-GCM seals any message shorter than 64 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        format!("{VERSION}{}", STANDARD.encode(sealed))
    }

    pub fn open(&self, sealed: &str, bound_to: &str) -> Result<String, OpenError> {
        let encoded = sealed.strip_prefix(VERSION).ok_or(OpenError)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| OpenError)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(bound_to.as_bytes()), &mut buffer)
            .map_err(|_| OpenError)?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| OpenError)
    }
}

/// The key in `path`, or `None` if there is no such file.
fn read_key_file(path: &Path) -> anyhow::Result<Option<SecretBox>> {
    match std::fs::read_to_string(path) {
        Ok(text) => SecretBox::from_base64(&text)
            .map(Some)
            .with_context(|| format!("invalid encryption key in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A new random key, written to `path` (mode 0600).
fn create_key_file(path: &Path) -> anyhow::Result<SecretBox> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no random source for a new encryption key: {e}"))?;
    write_private_file(path, STANDARD.encode(key).as_bytes())
        .with_context(|| format!("cannot create the encryption key file {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated a new secrets encryption key; back it up: without it stored secrets cannot be read"
    );
    Ok(SecretBox::new(&key))
}

/// Creates `path` readable by its owner only; fails if it exists.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_box() -> SecretBox {
        SecretBox::new(&[7u8; KEY_LEN])
    }

    #[test]
    fn sealed_values_open_with_the_same_key_and_binding_only() {
        let sealed = secret_box().seal("whsec_abc", "sub_1");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(secret_box().open(&sealed, "sub_1").unwrap(), "whsec_abc");
        assert!(secret_box().open(&sealed, "sub_2").is_err());
        assert!(
            SecretBox::new(&[8u8; KEY_LEN])
                .open(&sealed, "sub_1")
                .is_err()
        );
        assert!(secret_box().open("v1:AAAA", "sub_1").is_err());
        assert!(secret_box().open("plain", "sub_1").is_err());
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        assert_ne!(secret_box().seal("x", "a"), secret_box().seal("x", "a"));
    }

    fn key_file_settings(path: &Path) -> crate::config::SecretsSettings {
        crate::config::SecretsSettings {
            encryption_key: String::new(),
            key_file: path.display().to_string(),
        }
    }

    #[test]
    fn a_missing_key_file_is_created_private_for_a_new_database_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thinhook.key");
        let first = SecretBox::for_database(&key_file_settings(&path), None).unwrap();
        let sample = Some((first.seal("s", "b"), "b".to_owned()));
        let second = SecretBox::for_database(&key_file_settings(&path), sample).unwrap();
        assert_eq!(second.seal("t", "c").len(), first.seal("t", "c").len());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_or_wrong_key_for_sealed_secrets_is_refused_and_no_file_made() {
        let dir = tempfile::tempdir().unwrap();
        let sample = || Some((secret_box().seal("s", "b"), "b".to_owned()));
        let missing = dir.path().join("elsewhere.key");
        let error = SecretBox::for_database(&key_file_settings(&missing), sample()).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(!missing.exists());

        let wrong = dir.path().join("wrong.key");
        SecretBox::for_database(&key_file_settings(&wrong), None).unwrap();
        let error = SecretBox::for_database(&key_file_settings(&wrong), sample()).unwrap_err();
        assert!(error.to_string().contains("does not open"), "{error}");

        let configured = crate::config::SecretsSettings {
            encryption_key: STANDARD.encode([7u8; KEY_LEN]),
            key_file: String::new(),
        };
        assert!(SecretBox::for_database(&configured, sample()).is_ok());
    }
}
