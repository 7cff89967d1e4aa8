//! Client secrets: generated here, shown once, stored only as an argon2id hash.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "thcs_";

/// A freshly generated secret. Not `Debug`-printable, so it cannot slip into a log.
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system random source is available");
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Shown to the operator once, at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The argon2id PHC string to store (random salt, OWASP default cost).
    pub fn hash(&self) -> String {
        hash(&self.0)
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

fn hash(secret: &str) -> String {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .expect("argon2 with default parameters hashes any input")
        .to_string()
}

/// Whether `presented` matches the stored hash. Constant-time in the secret.
pub fn verify(presented: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(presented.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Spends the time of one verification, for unknown clients, so response
/// timing does not tell which client ids exist.
pub fn verify_against_nothing(presented: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("thinhook-dummy-secret"));
    let _ = verify(presented, dummy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_verifies_against_its_own_hash_only() {
        let secret = ClientSecret::generate();
        let hash = secret.hash();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(secret.expose(), &hash));
        assert!(!verify(ClientSecret::generate().expose(), &hash));
        assert!(!verify(secret.expose(), "not a hash"));
    }

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let (a, b) = (ClientSecret::generate(), ClientSecret::generate());
        assert!(a.expose().starts_with(PREFIX));
        assert!(a.expose().len() >= PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
