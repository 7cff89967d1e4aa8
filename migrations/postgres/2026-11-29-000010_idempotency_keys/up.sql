-- Idempotency-Key (the IETF httpapi draft) on the create routes: the
-- response the first request with a key got, stored in the transaction
-- that wrote what it created, and given again to retries for 24 hours.
CREATE TABLE idempotency_keys (
    -- A key is the client's own, on one route: the same key from another
    -- client, or on another route, is another key.
    client_id TEXT NOT NULL,
    -- method and route pattern, e.g. `POST /messages/{messageId}/comments`
    route TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- SHA-256 (hex) of the first request's method, path and body; a retry
    -- with another one is refused (422)
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    location TEXT,
    content_type TEXT NOT NULL,
    -- AES-256-GCM sealed, as a new subscription's answer holds its secret;
    -- see src/secret_box.rs
    body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (client_id, route, idempotency_key)
);
-- Pruning removes the oldest first.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
