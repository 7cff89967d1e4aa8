-- Per-message event counter: each event on a message gets the next number.
ALTER TABLE messages ADD COLUMN last_sequence BIGINT NOT NULL DEFAULT 0;

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY NOT NULL,
    owner_client_id TEXT NOT NULL,
    url TEXT NOT NULL,
    -- ' a b ': space-separated, padded, so LIKE '% a %' matches one type
    event_types TEXT NOT NULL,
    -- only events of this message, when set
    message_id TEXT,
    description TEXT,
    -- 1 or 0 (booleans are not portable through diesel's MultiConnection)
    enabled INTEGER NOT NULL,
    disabled_reason TEXT,
    -- AES-256-GCM sealed `whsec_…`; see src/secret_box.rs
    secret TEXT NOT NULL,
    -- the secret before the last rotation, signing too until it expires
    previous_secret TEXT,
    previous_secret_expires_at TIMESTAMP,
    -- first failure since the last success; long enough and it is disabled
    failing_since TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX subscriptions_by_owner ON subscriptions (owner_client_id, id);

CREATE TABLE events (
    id TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    -- path of the resource, joined to the public base URL when sent
    resource_path TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL REFERENCES events (id),
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    -- pending | delivered | failed
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    -- a dispatcher's lease; expired leases are claimed again by anyone
    locked_until TIMESTAMP,
    locked_by TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    delivered_at TIMESTAMP,
    fetched_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
-- The queue: due pending deliveries, oldest first.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- Leases held now: small, and counted per subscription at every claim.
CREATE INDEX deliveries_leased ON deliveries (locked_until) WHERE locked_until IS NOT NULL;
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at TIMESTAMP NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code INTEGER,
    -- timeout | connect | blocked | http | …, with a short message
    error TEXT,
    -- the first bytes of the response body
    response_excerpt TEXT,
    PRIMARY KEY (delivery_id, number)
);
