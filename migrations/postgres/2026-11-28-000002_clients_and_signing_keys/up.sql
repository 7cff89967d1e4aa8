-- API clients of the OAuth 2.0 client-credentials grant.
CREATE TABLE clients (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    -- argon2id PHC string; the secret itself is shown once and never stored.
    secret_hash TEXT NOT NULL,
    -- space-separated scopes the client may ask for
    scopes TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);

-- Ed25519 keys that sign access tokens. The newest unretired key signs;
-- retired keys keep verifying until the tokens they signed have expired.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    -- PKCS#8 document, sealed with the secrets key (src/secret_box.rs)
    private_key TEXT NOT NULL,
    -- base64url raw public key (the JWK `x`)
    public_key TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    retired_at TIMESTAMP
);

ALTER TABLE messages ADD COLUMN author_client_id TEXT;
ALTER TABLE comments ADD COLUMN author_client_id TEXT;
